//! The whole-cloud `cloud plan` as the user reads it, line by line: on an
//! empty account (every component, in order, with every field), and after
//! an `up` of the AWS side (exactly "No changes."). The JSON form lists the
//! same addresses. The expected text lives in tests/snapshots/: any change
//! in the plan's wording or order fails here and is reviewed there.
//!
//! Volatile parts (ARNs, resource ids, AZ names, timestamps, the account)
//! are normalised first; everything else must match exactly. After an
//! intended change, `EDGECTL_UPDATE_SNAPSHOTS=1 cargo test --test
//! cloud_plan` rewrites the snapshot (review its diff), and a run without
//! the variable checks it.

mod common;

use common::{Run, Stand};

/// The components of `cloud up` that need no Nomad.
const AWS_SIDE: &str = "--only=pca,roles-anywhere,network,ingress,servers,auth";

/// `<id>` in place of `prefix-<hex>` ids (vpc-0a1b…), whatever follows.
const ID_PREFIXES: &[&str] = &[
    "vpc", "subnet", "igw", "rtb", "rtbassoc", "sg", "sgr", "eipalloc", "eipassoc", "nat", "i", "ami", "lt",
    "eni", "vol", "acl",
];

/// One word (a run of non-separator characters) normalised.
fn normalise_word(w: &str) -> String {
    let hex = |s: &str| s.len() >= 8 && s.chars().all(|c| c.is_ascii_hexdigit());
    if w.starts_with("arn:") {
        return "<arn>".into();
    }
    if let Some((prefix, rest)) = w.split_once('-') {
        if ID_PREFIXES.contains(&prefix) && hex(rest) {
            return format!("{prefix}-<id>");
        }
    }
    // 2026-11-23T16:09:33Z and the like.
    let b = w.as_bytes();
    if b.len() >= 19 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[..4].iter().all(u8::is_ascii_digit)
    {
        return "<time>".into();
    }
    // A UUID.
    let parts: Vec<&str> = w.split('-').collect();
    if parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts.iter().all(|p| hex(p) || p.len() == 4)
    {
        return "<uuid>".into();
    }
    // The account.
    if w.len() == 12 && w.chars().all(|c| c.is_ascii_digit()) {
        return "<account>".into();
    }
    w.to_string()
}

/// AZ names (the region and one letter), also inside words such as
/// `network/subnet/public-eu-west-1a`.
fn normalise_azs(text: &str) -> String {
    const REGION: &str = "eu-west-1";
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(REGION) {
        let after = &rest[at + REGION.len()..];
        let mut chars = after.chars();
        let is_az = chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && !chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        out.push_str(&rest[..at]);
        if is_az {
            out.push_str("<az>");
            rest = &after[1..];
        } else {
            out.push_str(REGION);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The text with volatile words replaced. Words end at whitespace, quotes,
/// parentheses and commas, so `(account 123456789012)` and `"arn:…"` keep
/// their punctuation.
fn normalise(text: &str) -> String {
    let sep = |c: char| c.is_whitespace() || "\"'(),;[]{}".contains(c);
    let mut out = String::new();
    let mut word = String::new();
    for c in text.chars() {
        if sep(c) {
            out.push_str(&normalise_word(&word));
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    out.push_str(&normalise_word(&word));
    normalise_azs(&out)
}

/// Compares line by line, naming the first line that differs.
fn assert_lines(got: &str, want: &str, what: &str) {
    let got: Vec<&str> = got.trim_end().lines().collect();
    let want: Vec<&str> = want.trim_end().lines().collect();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g,
            w,
            "{what}: line {} differs\n--- got (normalised)\n{}",
            i + 1,
            got.join("\n")
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} lines, expected {}\n--- got (normalised)\n{}",
        got.len(),
        want.len(),
        got.join("\n")
    );
}

/// The address of each change line of a human plan: `  <marker> <address> (<reason>)`.
fn human_addresses(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("  ")?;
            let (marker, rest) = rest.split_once(' ')?;
            if !["+", "-", "~", "-/+"].contains(&marker) {
                return None;
            }
            Some(rest.split(" (").next()?.to_string())
        })
        .collect()
}

fn json_addresses(run: &Run) -> Vec<String> {
    let doc = run.json();
    assert_eq!(doc["schema"], 1, "{doc}");
    assert_eq!(doc["command"], "cloud plan", "{doc}");
    doc["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no changes list: {doc}"))
        .iter()
        .map(|c| {
            c["address"]
                .as_str()
                .expect("every change has an address")
                .to_string()
        })
        .collect()
}

#[test]
fn normalising_keeps_the_wording_and_replaces_what_varies() {
    assert_eq!(
        normalise(
            "deployment default in eu-west-1 (account 123456789012)\n  ~ network/subnet:eu-west-1a (vpc-0a1b2c3d4e5f60718, \"arn:aws:iam::123456789012:role/x\", 2026-11-23T16:09:33Z, 0f8e8a4c-1b2d-4e3f-9a8b-7c6d5e4f3a2b)"
        ),
        "deployment default in eu-west-1 (account <account>)\n  ~ network/subnet:<az> (vpc-<id>, \"<arn>\", <time>, <uuid>)"
    );
    assert_eq!(normalise("zone eu-west-1b; 4646"), "zone <az>; 4646");
    assert_eq!(
        normalise("network/subnet/public-eu-west-1c x.eu-west-1.amazonaws.com eu-west-1"),
        "network/subnet/public-<az> x.eu-west-1.amazonaws.com eu-west-1"
    );
    assert_eq!(
        human_addresses("x\n  + a/b (why (it is))\n      f: 1\n  - c (gone)\n\nPlan: 1"),
        ["a/b", "c"]
    );
}

#[tokio::test]
async fn the_whole_plan_reads_line_by_line_and_after_up_says_no_changes() {
    let stand = Stand::start().await;

    // An empty account, every component: the plan exactly as expected.
    let plan = stand.edgectl(&["cloud", "plan", "--detailed-exitcode"]).await;
    plan.expect(2);
    assert!(stand.writes().is_empty(), "plan wrote: {:?}", stand.writes());
    let got = normalise(&plan.stdout());
    if std::env::var_os("EDGECTL_UPDATE_SNAPSHOTS").is_some() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/snapshots/cloud_plan_empty.txt"
        );
        std::fs::write(path, &got).unwrap();
    }
    let want = include_str!("snapshots/cloud_plan_empty.txt");
    assert_lines(
        &got,
        want,
        "cloud plan on an empty account (EDGECTL_UPDATE_SNAPSHOTS=1 rewrites the snapshot)",
    );
    let human = human_addresses(&plan.stdout());
    assert!(human.len() > 20, "{human:?}");

    // The JSON form: the same changes, in the same order.
    let json = stand.edgectl(&["--output", "json", "cloud", "plan"]).await;
    json.expect(0);
    assert_eq!(json_addresses(&json), human);
    assert_eq!(
        json.json()["summary"]["create"].as_u64(),
        Some(plan.stdout().lines().filter(|l| l.starts_with("  + ")).count() as u64)
    );

    // The AWS side made, the same selection plans nothing: exactly the
    // header and "No changes.".
    let up = stand.edgectl(&["cloud", "up", AWS_SIDE]).await;
    up.expect(0);
    stand.sim.reset_requests();
    let again = stand
        .edgectl(&["cloud", "plan", "--detailed-exitcode", AWS_SIDE])
        .await;
    again.expect(0);
    assert_lines(
        &normalise(&again.stdout()),
        "deployment default in eu-west-1 (account <account>)\n\nNo changes.",
        "cloud plan after up",
    );
    assert!(stand.writes().is_empty(), "plan wrote: {:?}", stand.writes());
    let json = stand
        .edgectl(&["--output", "json", "cloud", "plan", AWS_SIDE])
        .await;
    json.expect(0);
    assert_eq!(json_addresses(&json), Vec::<String>::new());
    assert_eq!(human_addresses(&again.stdout()), Vec::<String>::new());
}
