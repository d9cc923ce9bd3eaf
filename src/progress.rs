//! Long waits the user should see (CA activation, NAT gateway, load
//! balancer, leader election, deployments): on a terminal one animated
//! line at the bottom of stderr, redrawn ten times a second; in a CI log
//! plain lines, a wait printed when it starts or changes and then every
//! 30 seconds with how long it has lasted, so a log neither floods nor
//! looks hung.

use std::io::Write;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// JSON output, or `-v` where logs carry the story.
    Off,
    /// stderr is not a terminal (CI logs, pipes).
    Lines,
    /// stderr is a terminal.
    Live,
}

const REPEAT_EVERY: Duration = Duration::from_secs(30);
const FRAME: Duration = Duration::from_millis(100);
const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

struct Wait {
    key: String,
    what: String,
    since: Instant,
    printed: Instant,
}

#[derive(Default)]
struct State {
    waits: Vec<Wait>,
    /// A live line is on screen and must be erased before other output.
    drawn: bool,
    frame: usize,
}

/// The waits in progress. Clones share them.
#[derive(Clone)]
pub struct Waits {
    mode: Mode,
    state: Arc<Mutex<State>>,
}

impl Waits {
    pub fn new(mode: Mode) -> Waits {
        let waits = Waits {
            mode,
            state: Arc::default(),
        };
        if mode == Mode::Live {
            let weak = Arc::downgrade(&waits.state);
            std::thread::spawn(move || ticker(weak));
        }
        waits
    }

    /// Starts or updates the wait called `key`.
    pub fn wait(&self, key: &str, what: &str) {
        let mut s = self.lock();
        let now = Instant::now();
        match s.waits.iter().position(|w| w.key == key) {
            Some(i) => {
                let w = &mut s.waits[i];
                let changed = w.what != what;
                let due = now.duration_since(w.printed) >= REPEAT_EVERY;
                if changed {
                    w.what = what.to_string();
                }
                if self.mode == Mode::Lines && (changed || due) {
                    w.printed = now;
                    let lasted = now.duration_since(w.since);
                    eprintln!("  {key}: {what} ({} so far)", elapsed(lasted));
                }
            }
            None => {
                if self.mode == Mode::Lines {
                    eprintln!("  {key}: {what}");
                }
                s.waits.push(Wait {
                    key: key.to_string(),
                    what: what.to_string(),
                    since: now,
                    printed: now,
                });
            }
        }
    }

    /// Ends the wait called `key`, if any.
    pub fn done(&self, key: &str) {
        let mut s = self.lock();
        s.waits.retain(|w| w.key != key);
        erase(&mut s);
    }

    /// A permanent stderr line (erasing the live line first).
    pub fn line(&self, text: &str) {
        if self.mode == Mode::Off {
            return;
        }
        let mut s = self.lock();
        erase(&mut s);
        eprintln!("{text}");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn erase(s: &mut State) {
    if std::mem::take(&mut s.drawn) {
        eprint!("\r\x1b[2K");
    }
}

/// Redraws the live line until the last [`Waits`] clone is gone, then
/// leaves the terminal clean.
fn ticker(state: Weak<Mutex<State>>) {
    loop {
        std::thread::sleep(FRAME);
        let Some(state) = state.upgrade() else { return };
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        if s.waits.is_empty() {
            continue;
        }
        s.frame = s.frame.wrapping_add(1);
        let line = render(&s.waits, s.frame, width());
        eprint!("\r\x1b[2K{line}");
        let _ = std::io::stderr().flush();
        s.drawn = true;
    }
}

impl Drop for State {
    fn drop(&mut self) {
        erase(self);
    }
}

/// `  ⠹ ingress/nlb: waiting for it to become active  [  <=>     ] 1m05s (+2 more)`,
/// cut to the terminal's width. The bar only shows that time passes: AWS
/// gives no percentage for these waits.
fn render(waits: &[Wait], frame: usize, width: usize) -> String {
    let Some(first) = waits.first() else {
        return String::new();
    };
    let spin = SPINNER[frame % SPINNER.len()];
    const SLOTS: usize = 10;
    let pos = {
        let p = (frame / 2) % (2 * (SLOTS - 3));
        if p < SLOTS - 3 {
            p
        } else {
            2 * (SLOTS - 3) - p
        }
    };
    let bar: String = (0..SLOTS)
        .map(|i| match i.checked_sub(pos) {
            Some(0) => '<',
            Some(1) => '=',
            Some(2) => '>',
            _ => ' ',
        })
        .collect();
    let more = match waits.len() {
        1 => String::new(),
        n => format!(" (+{} more)", n - 1),
    };
    let tail = format!(" [{bar}] {}{more}", elapsed(first.since.elapsed()));
    let head = format!("  {spin} {}: {}", first.key, first.what);
    let room = width.saturating_sub(tail.chars().count() + 1);
    let head: String = if head.chars().count() > room {
        let mut cut: String = head.chars().take(room.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        head
    };
    format!("{head}{tail}")
}

/// The terminal's width from `COLUMNS`, else 80.
fn width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|w: &usize| *w >= 20)
        .unwrap_or(80)
}

/// `42s`, `3m07s`.
pub fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(key: &str, what: &str, ago: u64) -> Wait {
        let since = Instant::now() - Duration::from_secs(ago);
        Wait {
            key: key.into(),
            what: what.into(),
            since,
            printed: since,
        }
    }

    #[test]
    fn the_live_line_names_the_first_wait_and_counts_the_rest() {
        let waits = [
            wait("ingress/nlb", "waiting for it to become active", 65),
            wait("pca/root", "waiting for activation", 3),
        ];
        let line = render(&waits, 0, 120);
        assert!(
            line.starts_with("  ⠋ ingress/nlb: waiting for it to become active ["),
            "{line}"
        );
        assert!(line.ends_with("] 1m05s (+1 more)"), "{line}");
        assert!(line.chars().count() <= 120);
    }

    #[test]
    fn a_narrow_terminal_cuts_the_text_not_the_time() {
        let waits = [wait(
            "network/nat-gateway",
            "waiting for the NAT gateway to become available",
            7,
        )];
        let line = render(&waits, 3, 40);
        assert!(line.chars().count() < 40, "{line}");
        assert!(line.contains('…') && line.ends_with("7s"), "{line}");
    }

    #[test]
    fn the_bar_moves_and_stays_inside() {
        let waits = [wait("a", "b", 0)];
        let frames: Vec<String> = (0..40).map(|f| render(&waits, f, 80)).collect();
        assert!(frames.windows(2).any(|w| w[0] != w[1]));
        for f in &frames {
            let bar = &f[f.find('[').unwrap()..=f.find(']').unwrap()];
            assert_eq!(bar.chars().count(), 12, "{f}");
            assert!(bar.contains("<=>"), "{f}");
        }
    }

    #[test]
    fn durations_read_as_minutes_and_seconds() {
        assert_eq!(elapsed(Duration::from_secs(42)), "42s");
        assert_eq!(elapsed(Duration::from_secs(187)), "3m07s");
    }
}
