//! The finishing touches of the CLI: `doctor` against the moto stand,
//! shell completions, man pages, an example in every `--help`, and no
//! colour where nobody asked for it.

mod common;

use common::{edgectl_offline, Stand, FOUNDATION};

fn check<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {doc:#}"))
}

#[tokio::test]
async fn doctor_before_and_after_cloud_up() {
    let stand = Stand::start().await;
    let no_inventory = stand.dir.path().join("no-inventory.yml");
    let no_inventory = no_inventory.to_str().unwrap();

    // Before `cloud up`: AWS answers, the outputs are missing, with the hint.
    let before = stand.edgectl(&["doctor", "-i", no_inventory]).await;
    before.expect(1);
    let out = before.stdout();
    assert!(out.contains("ok   region"), "{out}");
    assert!(out.contains("ok   aws credentials"), "{out}");
    assert!(out.contains("ok   deployment config"), "{out}");
    assert!(out.contains("FAIL outputs: foundation"), "{out}");
    assert!(out.contains("PCA ARN (`/infrastructure/pca/arn`)"), "{out}");
    assert!(out.contains("hint: run `edgectl cloud up"), "{out}");
    assert!(out.contains("FAIL nomad"), "{out}");
    assert!(!out.contains('\x1b'), "{out}");
    assert!(!out.contains("ssh "), "no inventory, no SSH checks: {out}");

    let json = stand
        .edgectl(&["doctor", "-i", no_inventory, "--output", "json"])
        .await;
    json.expect(1);
    let doc = json.json();
    assert_eq!(
        (doc["schema"].as_u64(), doc["command"].as_str()),
        (Some(1), Some("doctor"))
    );
    let outputs = check(&doc, "outputs: foundation");
    assert_eq!(outputs["ok"], false);
    assert!(
        outputs["hint"].as_str().unwrap().contains("edgectl cloud up"),
        "{outputs}"
    );
    assert_eq!(check(&doc, "aws credentials")["ok"], true);
    assert!(check(&doc, "region")["hint"].is_null());

    // After the foundation: those outputs pass; Nomad (NOMAD_ADDR is
    // https://127.0.0.1:1 in the stand) fails and says where it looked.
    stand.edgectl(&["cloud", "up", FOUNDATION]).await.expect(0);
    let after = stand
        .edgectl(&["doctor", "-i", no_inventory, "--output", "json"])
        .await;
    after.expect(1);
    let doc = after.json();
    assert_eq!(check(&doc, "outputs: foundation")["ok"], true, "{doc:#}");
    let control = check(&doc, "outputs: control plane");
    assert_eq!(control["ok"], false);
    assert!(
        control["detail"].as_str().unwrap().contains("Nomad endpoint"),
        "{control}"
    );
    let nomad = check(&doc, "nomad");
    assert_eq!(nomad["ok"], false, "{nomad}");
    assert!(
        nomad["detail"].as_str().unwrap().contains("127.0.0.1:1"),
        "{nomad}"
    );
    assert!(nomad["hint"].as_str().unwrap().contains("NOMAD_ADDR"), "{nomad}");
    // moto answers with a Date header: the clock is compared, not skipped.
    let clock = check(&doc, "clock");
    assert_eq!(clock["status"], "ok", "{clock}");
}

#[tokio::test]
async fn doctor_checks_each_inventory_host_over_ssh() {
    let stand = Stand::start().await;
    // Nothing listens on port 1: the connection is refused at once.
    let inventory = stand.dir.path().join("inventory.yml");
    std::fs::write(
        &inventory,
        "all:\n  vars:\n    ansible_user: root\n    nomad_datacenter: dc1\n  hosts:\n    pi-01:\n      ansible_host: 127.0.0.1\n      \
         ansible_port: 1\n    pi-02:\n      ansible_host: 127.0.0.1\n      ansible_port: 1\n",
    )
    .unwrap();
    let known_hosts = stand.dir.path().join("known_hosts");
    let run = stand
        .edgectl(&[
            "doctor",
            "-i",
            inventory.to_str().unwrap(),
            "--known-hosts",
            known_hosts.to_str().unwrap(),
        ])
        .await;
    run.expect(1);
    let out = run.stdout();
    for host in ["pi-01", "pi-02"] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("ssh {host}")))
            .unwrap_or_else(|| panic!("no line for {host}:\n{out}"));
        assert!(line.starts_with("FAIL"), "{line}");
        assert!(line.contains("127.0.0.1"), "{line}");
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().unwrap();
    let bash = edgectl_offline(dir.path(), &["completions", "bash"]);
    bash.expect(0);
    let text = bash.stdout();
    for word in [
        "edgectl",
        "cloud",
        "device",
        "job",
        "doctor",
        "completions",
        "provision",
    ] {
        assert!(text.contains(word), "bash completion lacks {word:?}");
    }
    let zsh = edgectl_offline(dir.path(), &["completions", "zsh"]);
    zsh.expect(0);
    assert!(zsh.stdout().starts_with("#compdef edgectl"), "{}", zsh.stdout());
    let fish = edgectl_offline(dir.path(), &["completions", "fish"]);
    fish.expect(0);
    assert!(fish.stdout().contains("complete -c edgectl"), "{}", fish.stdout());
    let bad = edgectl_offline(dir.path(), &["completions", "cmd.exe"]);
    bad.expect(2);
}

#[test]
fn man_to_stdout_and_one_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let top = edgectl_offline(dir.path(), &["man"]);
    top.expect(0);
    assert!(top.stdout().contains(".TH EDGECTL 1"), "{}", top.stdout());
    assert!(top.stdout().contains("doctor"));

    let pages = dir.path().join("man1");
    edgectl_offline(dir.path(), &["man", "--out-dir", pages.to_str().unwrap()]).expect(0);
    for page in [
        "edgectl.1",
        "edgectl-cloud-up.1",
        "edgectl-device-provision.1",
        "edgectl-doctor.1",
    ] {
        let text = std::fs::read_to_string(pages.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        let title = page.trim_end_matches(".1").to_uppercase();
        assert!(text.contains(&format!(".TH {title} 1")), "{page}:\n{text}");
    }
    let up = std::fs::read_to_string(pages.join("edgectl-cloud-up.1")).unwrap();
    assert!(up.contains("edgectl 0."), "the version names the source: {up}");
}

/// The subcommands listed under `Commands:` in a help text (not `help`).
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

#[test]
fn every_subcommand_help_has_an_example() {
    let dir = tempfile::tempdir().unwrap();
    let top = edgectl_offline(dir.path(), &["--help"]);
    top.expect(0);
    let mut todo: Vec<Vec<String>> = commands(&top.stdout()).into_iter().map(|c| vec![c]).collect();
    let mut leaves = Vec::new();
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let run = edgectl_offline(dir.path(), &args);
        run.expect(0);
        let subs = commands(&run.stdout());
        if subs.is_empty() {
            assert!(
                run.stdout().contains("Examples:\n  "),
                "`edgectl {}` has no example:\n{}",
                path.join(" "),
                run.stdout()
            );
            leaves.push(path.join(" "));
        } else {
            todo.extend(subs.into_iter().map(|s| [path.clone(), vec![s]].concat()));
        }
    }
    for expected in [
        "cloud up",
        "device provision",
        "job run",
        "env",
        "completions",
        "man",
        "doctor",
    ] {
        assert!(
            leaves.iter().any(|l| l == expected),
            "{expected} not found in {leaves:?}"
        );
    }
}

#[test]
fn no_ansi_escapes_on_an_error_without_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    // NO_COLOR=1 and a pipe, as edgectl_offline runs it.
    let run = edgectl_offline(dir.path(), &["--deployment", "Bad_Name", "cloud", "plan"]);
    run.expect(2);
    assert!(run.stderr().contains("error:"), "{}", run.stderr());
    assert!(!run.stderr().contains('\x1b'), "{:?}", run.stderr());
    // A pipe alone (NO_COLOR unset) is no terminal either.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(["--deployment", "Bad_Name", "cloud", "plan"])
        .current_dir(dir.path())
        .env_clear()
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error:") && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
}
