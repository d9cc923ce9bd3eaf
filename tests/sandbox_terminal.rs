//! What a person sees: README's first command, `scripts/sandbox up`, and
//! then `edgectl device provision` and `edgectl job run` typed into a real
//! terminal (tmux, 160×50), read back from tmux's screen and history. The
//! sandbox must come up (its step lines as it goes, then the summary naming
//! what is simulated and what to try next), provisioning must show a line
//! per device and the summary table, the job run its evaluation and
//! deployment lines, and nothing secret may ever be on screen. The
//! sandbox's state lives in a temp dir, and it is taken down at the end
//! (also when the test fails).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SANDBOX_TIMEOUT: Duration = Duration::from_secs(900);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tmux server of our own (socket name), one window, sized like a
/// terminal a person would use; killed with the sandbox on drop.
struct Terminal {
    socket: String,
    state: tempfile::TempDir,
}

impl Terminal {
    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs (apt-get install tmux)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start(state: tempfile::TempDir) -> Terminal {
        let t = Terminal {
            socket: format!("edgectl-test-{}", std::process::id()),
            state,
        };
        let xdg = format!("XDG_STATE_HOME={}", t.state.path().display());
        let path = format!("PATH={}", std::env::var("PATH").unwrap_or_default());
        let mut args = vec![
            "new-session",
            "-d",
            "-s",
            "sandbox",
            "-x",
            "160",
            "-y",
            "50",
            "-c",
            env!("CARGO_MANIFEST_DIR"),
            "-e",
            &xdg,
            "-e",
            &path,
        ];
        let target = std::env::var("CARGO_TARGET_DIR")
            .ok()
            .map(|d| format!("CARGO_TARGET_DIR={d}"));
        if let Some(t) = &target {
            args.extend(["-e", t.as_str()]);
        }
        args.extend(["bash", "--noprofile", "--norc"]);
        t.tmux(&args);
        t
    }

    /// Types `line` and Enter.
    fn type_line(&self, line: &str) {
        self.tmux(&["send-keys", "-t", "sandbox", "-l", line]);
        self.tmux(&["send-keys", "-t", "sandbox", "Enter"]);
    }

    /// The whole history and screen as text, wrapped lines joined.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", "sandbox"])
    }

    /// Waits until the screen shows `marker=<code>`; the code, and every
    /// distinct screen seen on the way (what a person saw change).
    fn wait_for(&self, marker: &str, timeout: Duration) -> (i32, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let mut seen: Vec<String> = Vec::new();
        loop {
            let screen = self.screen();
            if seen.last() != Some(&screen) {
                seen.push(screen.clone());
            }
            if let Some(code) = screen
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{marker}=")))
                .and_then(|c| c.trim().parse().ok())
            {
                return (code, seen);
            }
            assert!(
                Instant::now() < deadline,
                "no {marker} within {timeout:?}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn sandbox_state(&self) -> PathBuf {
        self.state.path().join("edgectl/sandbox")
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let out = Command::new(repo().join("scripts/sandbox"))
            .arg("down")
            .env("XDG_STATE_HOME", self.state.path())
            .output();
        if let Ok(out) = out {
            eprintln!("sandbox down: {}", String::from_utf8_lossy(&out.stderr));
        }
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// Lines of a PEM body, or the value: what must never be on screen.
fn needles(value: &str) -> Vec<String> {
    value
        .lines()
        .map(str::trim)
        .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
        .map(str::to_string)
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_person_runs_the_sandbox_then_provisions_and_runs_a_job() {
    let term = Terminal::start(tempfile::tempdir().unwrap());

    let started = Instant::now();
    term.type_line("scripts/sandbox up; echo SANDBOX-EXIT=$?");
    let (code, screens) = term.wait_for("SANDBOX-EXIT", SANDBOX_TIMEOUT);
    let up = screens.last().unwrap().clone();
    eprintln!(
        "--- scripts/sandbox up ({:.0}s, {} distinct screens):\n{up}",
        started.elapsed().as_secs_f64(),
        screens.len()
    );
    assert_eq!(code, 0, "scripts/sandbox up failed:\n{up}");
    // Step lines appeared while it ran, before the summary did.
    let first_step = screens
        .iter()
        .position(|s| s.contains("sandbox: supervisor started"))
        .expect("the supervisor's start was shown");
    let summary = screens
        .iter()
        .position(|s| s.contains("edgectl sandbox is up"))
        .expect("the summary was shown");
    assert!(first_step < summary, "progress came before the summary");
    for wanted in [
        "sandbox: moto (SIMULATED AWS",
        "SIMULATED IAM Roles Anywhere",
        "edgectl cloud up --only pca,roles-anywhere,servers: ok",
        "the server.hcl of the user data `cloud up` gave the instance",
        "edgectl device provision --all: ok; nodes ready: sandbox-device1, sandbox-device2",
        "edgectl job run heartbeat --var count=2: ok; running on sandbox-device",
        "Simulated (nothing here reaches AWS):",
        "Try next:",
        "eval \"$(edgectl env --client-cert --token management)\"",
        "Nomad API/UI: https://",
    ] {
        assert!(up.contains(wanted), "{wanted:?} is not on screen:\n{up}");
    }

    // As the summary suggests: the sandbox's env, then edgectl itself.
    let state = term.sandbox_state();
    term.type_line(&format!(
        ". {}/sandbox.env && edgectl device provision --all -i inventory/sandbox.yml \
         --known-hosts {}/known_hosts --artifacts {}/artifacts; echo PROVISION-EXIT=$?",
        state.display(),
        state.display(),
        state.display()
    ));
    let (code, _) = term.wait_for("PROVISION-EXIT", COMMAND_TIMEOUT);
    let screen = term.screen();
    let provision = &screen[screen.rfind(". /").unwrap_or(0)..];
    eprintln!("--- device provision:\n{provision}");
    assert_eq!(code, 0, "{provision}");
    for host in ["sandbox-device1", "sandbox-device2"] {
        assert!(
            provision.contains(&format!("{host}: connecting")),
            "no progress line for {host}:\n{provision}"
        );
        // HOST RESULT CHANGES …: the sandbox provisioned it already.
        let row = provision.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 5 && f[0] == host && f[1] == "ok" && f[2] == "0"
        });
        assert!(row, "no unchanged summary row for {host}:\n{provision}");
    }
    assert!(provision.contains("2 of 2 devices succeeded"), "{provision}");
    assert!(
        provision.contains("HOST") && provision.contains("RESULT") && provision.contains("SSH EXECS"),
        "no summary table:\n{provision}"
    );

    term.type_line("edgectl job run heartbeat --var count=2 --var message=typed; echo JOB-EXIT=$?");
    let (code, _) = term.wait_for("JOB-EXIT", COMMAND_TIMEOUT);
    let screen = term.screen();
    let job = &screen[screen.rfind("edgectl job run").unwrap_or(0)..];
    eprintln!("--- job run:\n{job}");
    assert_eq!(code, 0, "{job}");
    assert!(job.contains("evaluation ") && job.contains(": complete"), "{job}");
    assert!(job.contains("deployment ") && job.contains("successful"), "{job}");
    // The live wait line was erased, not left behind half-drawn.
    assert!(!job.contains("[<=>") && !job.contains('⠋'), "{job}");

    // Nothing secret on screen, ever: the management token, the CLI key.
    let nd = state.join("nomad");
    let mut secrets = needles(&read(&nd.join("cli-key.pem")));
    secrets.push(read(&nd.join("token")).trim().to_string());
    assert!(secrets.len() > 2, "{secrets:?}");
    let everything = [screens.join("\n"), term.screen()].join("\n");
    assert!(!everything.contains("PRIVATE KEY"), "a private key on screen");
    for s in &secrets {
        assert!(
            !everything.contains(s.as_str()),
            "a secret on screen: {}…",
            &s[..8]
        );
    }
}
