//! The `ingress` and `servers` components against moto through the
//! simulator, in a whole `cloud up` (network first, acl last against one
//! real Nomad server on loopback, as `cloud_acl.rs` does): everything is
//! checked with our own SDK calls, a server terminated by hand is replaced
//! by the next `up`, a smaller `instance_count` removes the highest slots,
//! a second `up` makes no write, and `down` leaves nothing tagged behind.
//!
//! moto is lenient where AWS is not, and these tests do not lean on it: it
//! makes a twin load balancer for an existing name (we look up first; the
//! unit tests cover twins), targets are always healthy, instances never
//! boot (the user data is checked as text here and run for real in
//! `server_config_nomad.rs`), and IAM changes reach EC2 at once.

mod common;

use aws_sdk_ec2::types::{Filter, HttpTokensState, Instance, VolumeType};
use aws_sdk_elasticloadbalancingv2::types::{LoadBalancerSchemeEnum, LoadBalancerTypeEnum, ProtocolEnum};
use base64::Engine;
use common::whole_cloud::{command, first_up, LOCALHOST, UP_TIMEOUT};
use common::{ssm, Run, Stand};
use std::collections::BTreeSet;
use std::time::Instant;
use testkit::nomad::Ports;

const ENDPOINT: &str = "/infrastructure/nomad/endpoint";

async fn run(stand: &Stand, args: &[&str], env: &[(&str, &str)]) -> Run {
    tokio::time::timeout(UP_TIMEOUT, common::run(command(stand, args, env)))
        .await
        .unwrap_or_else(|_| panic!("edgectl {args:?} finishes in time"))
}

fn tag<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// The deployment's server instances that are not terminated (or going).
async fn live_instances(ec2: &aws_sdk_ec2::Client) -> Vec<Instance> {
    let out = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:edgectl:deployment")
                .values("default")
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .values("stopping")
                .values("stopped")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut all: Vec<Instance> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances().to_vec())
        .collect();
    all.sort_by_key(|i| tag(i, "edgectl:slot").unwrap_or_default().to_string());
    all
}

/// Registered target ids per port, 4646 then 4647.
async fn targets(elb: &aws_sdk_elasticloadbalancingv2::Client) -> Vec<BTreeSet<String>> {
    let mut out = Vec::new();
    for port in [4646, 4647] {
        let tg = elb
            .describe_target_groups()
            .names(format!("edgectl-default-{port}"))
            .send()
            .await
            .unwrap()
            .target_groups()[0]
            .clone();
        let health = elb
            .describe_target_health()
            .target_group_arn(tg.target_group_arn().unwrap())
            .send()
            .await
            .unwrap();
        out.push(
            health
                .target_health_descriptions()
                .iter()
                .filter_map(|t| t.target()?.id().map(String::from))
                .collect(),
        );
    }
    out
}

fn ids(instances: &[Instance]) -> BTreeSet<String> {
    instances
        .iter()
        .map(|i| i.instance_id().unwrap().to_string())
        .collect()
}

async fn our_lbs(elb: &aws_sdk_elasticloadbalancingv2::Client) -> Vec<String> {
    elb.describe_load_balancers()
        .send()
        .await
        .unwrap()
        .load_balancers()
        .iter()
        .filter(|l| l.load_balancer_name() == Some("edgectl-default"))
        .map(|l| l.load_balancer_arn().unwrap().to_string())
        .collect()
}

async fn our_target_groups(elb: &aws_sdk_elasticloadbalancingv2::Client) -> Vec<String> {
    elb.describe_target_groups()
        .send()
        .await
        .unwrap()
        .target_groups()
        .iter()
        .filter(|t| {
            t.target_group_name()
                .is_some_and(|n| n.starts_with("edgectl-default-"))
        })
        .map(|t| t.target_group_arn().unwrap().to_string())
        .collect()
}

/// IAM returns policy documents URL-encoded.
fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// No change of ingress or servers in the output of an `up` or `plan`.
fn assert_no_change_of_ours(run: &Run) {
    let text = run.stdout();
    for ours in [
        "ingress/",
        "servers/",
        "iam/server-",
        "ssm:/infrastructure/nomad/endpoint",
    ] {
        assert!(!text.contains(ours), "{ours} changed:\n{text}");
    }
}

fn count(writes: &[String], action: &str) -> usize {
    writes.iter().filter(|w| w.as_str() == action).count()
}

/// Checks every server against the reference and returns the user data of
/// the first one.
async fn verify_servers(stand: &Stand, lb_dns: &str, n: usize) -> Vec<Instance> {
    let sdk = stand.sdk().await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let live = live_instances(&ec2).await;
    assert_eq!(live.len(), n, "{live:#?}");
    let private: BTreeSet<String> = ec2
        .describe_subnets()
        .filters(
            Filter::builder()
                .name("tag:edgectl:deployment")
                .values("default")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .subnets()
        .iter()
        .filter(|s| s.cidr_block().is_some_and(|c| c.ends_with("/24")))
        .map(|s| s.subnet_id().unwrap().to_string())
        .collect();
    assert_eq!(private.len(), 3, "three private subnets");
    let mut subnets = BTreeSet::new();
    for (slot, i) in live.iter().enumerate() {
        let id = i.instance_id().unwrap();
        assert_eq!(tag(i, "edgectl:slot"), Some(slot.to_string().as_str()), "{id}");
        assert_eq!(tag(i, "edgectl:deployment"), Some("default"), "{id}");
        assert_eq!(tag(i, "nomad-type"), Some("server"), "{id}");
        assert_eq!(
            tag(i, "Name"),
            Some(format!("edgectl-default-server-{slot}").as_str()),
            "{id}"
        );
        assert_eq!(i.instance_type().unwrap().as_str(), "t3.medium");
        assert!(
            i.iam_instance_profile()
                .and_then(|p| p.arn())
                .is_some_and(|a| a.ends_with(":instance-profile/edgectl-default-server")),
            "{id}: {:?}",
            i.iam_instance_profile()
        );
        assert_eq!(
            i.metadata_options().and_then(|m| m.http_tokens()),
            Some(&HttpTokensState::Required),
            "{id}: IMDSv2"
        );
        assert!(
            private.contains(i.subnet_id().unwrap()),
            "{id} not in a private subnet"
        );
        subnets.insert(i.subnet_id().unwrap().to_string());
        let sgs: Vec<&str> = i.security_groups().iter().filter_map(|g| g.group_id()).collect();
        assert_eq!(sgs.len(), 1, "{id}: {sgs:?}");
        let sg = &ec2
            .describe_security_groups()
            .group_ids(sgs[0])
            .send()
            .await
            .unwrap()
            .security_groups()[0]
            .clone();
        assert!(
            sg.tags().iter().any(|t| t.key() == Some("edgectl:deployment")),
            "{id}: security group {} is not the network's",
            sgs[0]
        );
        let volumes = ec2
            .describe_volumes()
            .filters(
                Filter::builder()
                    .name("attachment.instance-id")
                    .values(id)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let v = &volumes.volumes()[0];
        assert_eq!(v.volume_type(), Some(&VolumeType::Gp3), "{id}");
        assert_eq!(v.encrypted(), Some(true), "{id}");
        assert_eq!(v.size(), Some(20), "{id}");
        let ami = ssm(
            stand,
            "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
        )
        .await;
        assert_eq!(i.image_id(), ami.as_deref(), "{id}: AL2023 x86_64");
        let ud = ec2
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap()
            .user_data()
            .and_then(|u| u.value())
            .map(|v| base64::engine::general_purpose::STANDARD.decode(v).unwrap())
            .map(|v| String::from_utf8(v).unwrap())
            .unwrap_or_default();
        assert!(ud.starts_with("#!/bin/bash\n"), "{id}: {ud}");
        assert!(
            ud.contains(&format!("http = \"{lb_dns}:4646\"")),
            "{id}: advertise:\n{ud}"
        );
        assert!(ud.contains(&format!("bootstrap_expect = {n}")), "{id}:\n{ud}");
    }
    assert_eq!(subnets.len(), n.min(3), "spread over the AZs");
    live
}

#[tokio::test]
async fn up_builds_ingress_and_servers_replaces_what_is_gone_and_down_removes_them() {
    let stand = Stand::start().await;
    let sdk = stand.sdk().await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&sdk);
    let iam = aws_sdk_iam::Client::new(&sdk);
    let ports = Ports::free(LOCALHOST).unwrap();
    let addr = format!("https://127.0.0.1:{}", ports.http);
    // Nomad on loopback, started by the test once the certificates exist:
    // give it time (the stand's default wait is for tests without Nomad).
    let env = [("NOMAD_ADDR", addr.as_str()), ("EDGECTL_NOMAD_WAIT", "240")];

    // An empty account: everything is a create, and plan writes nothing.
    let plan = run(&stand, &["cloud", "plan", "--detailed-exitcode"], &env).await;
    plan.expect(2);
    let text = plan.stdout();
    for address in [
        "+ ingress/nlb",
        "+ ingress/target-group:4646",
        "+ ingress/target-group:4647",
        "+ ingress/listener:4646",
        "+ ingress/listener:4647",
        "+ ssm:/infrastructure/nomad/endpoint",
        "+ iam/server-role ",
        "+ iam/server-role-policy",
        "+ iam/server-instance-profile",
        "+ servers/instance:0",
        "+ servers/instance:1",
        "+ servers/instance:2",
        "~ servers/targets:4646",
        "~ servers/targets:4647",
    ] {
        assert!(text.contains(address), "{address} missing from the plan:\n{text}");
    }
    assert!(stand.writes().is_empty(), "plan wrote: {:?}", stand.writes());

    stand.sim.reset_requests();
    let (up, _nomad) = first_up(&stand, &["cloud", "up"], &env, ports).await;
    let up = up.run;
    up.expect(0);
    let first_up_requests = stand.sim.requests().len();
    let writes = stand.writes();
    assert_eq!(
        count(&writes, "elasticloadbalancing:CreateLoadBalancer"),
        1,
        "{writes:?}"
    );
    assert_eq!(count(&writes, "ec2:RunInstances"), 3, "{writes:?}");

    // The load balancer, its target groups and listeners.
    let lbs = elb
        .describe_load_balancers()
        .names("edgectl-default")
        .send()
        .await
        .unwrap();
    assert_eq!(lbs.load_balancers().len(), 1, "exactly one load balancer");
    let lb = &lbs.load_balancers()[0];
    assert_eq!(lb.r#type(), Some(&LoadBalancerTypeEnum::Network));
    assert_eq!(lb.scheme(), Some(&LoadBalancerSchemeEnum::InternetFacing));
    let dns = lb.dns_name().unwrap().to_string();
    assert_eq!(ssm(&stand, ENDPOINT).await.as_deref(), Some(dns.as_str()));
    let lb_subnets: BTreeSet<String> = lb
        .availability_zones()
        .iter()
        .filter_map(|z| z.subnet_id().map(String::from))
        .collect();
    let public: BTreeSet<String> = ec2
        .describe_subnets()
        .set_subnet_ids(Some(lb_subnets.iter().cloned().collect()))
        .send()
        .await
        .unwrap()
        .subnets()
        .iter()
        .filter(|s| s.cidr_block().is_some_and(|c| c.ends_with("/28")))
        .map(|s| s.subnet_id().unwrap().to_string())
        .collect();
    assert_eq!(public.len(), 3, "the NLB sits in the three public subnets");
    assert_eq!(lb_subnets, public);
    let tgs = elb
        .describe_target_groups()
        .names("edgectl-default-4646")
        .names("edgectl-default-4647")
        .send()
        .await
        .unwrap();
    let mut tg_arns = Vec::new();
    for (tg, port) in tgs.target_groups().iter().zip([4646, 4647]) {
        assert_eq!(tg.port(), Some(port));
        assert_eq!(tg.protocol(), Some(&ProtocolEnum::Tcp));
        assert_eq!(tg.health_check_protocol(), Some(&ProtocolEnum::Tcp));
        assert_eq!(tg.health_check_interval_seconds(), Some(30));
        assert_eq!(tg.vpc_id(), lb.vpc_id());
        tg_arns.push(tg.target_group_arn().unwrap().to_string());
    }
    let listeners = elb
        .describe_listeners()
        .load_balancer_arn(lb.load_balancer_arn().unwrap())
        .send()
        .await
        .unwrap();
    let mut forwards: Vec<(i32, String)> = listeners
        .listeners()
        .iter()
        .map(|l| {
            assert_eq!(l.protocol(), Some(&ProtocolEnum::Tcp));
            (
                l.port().unwrap(),
                l.default_actions()[0].target_group_arn().unwrap().to_string(),
            )
        })
        .collect();
    forwards.sort();
    assert_eq!(
        forwards,
        vec![(4646, tg_arns[0].clone()), (4647, tg_arns[1].clone())]
    );

    // The servers, their role and profile, and their registration.
    let live = verify_servers(&stand, &dns, 3).await;
    assert_eq!(targets(&elb).await, vec![ids(&live), ids(&live)]);
    let role = iam
        .get_role()
        .role_name("edgectl-default-server")
        .send()
        .await
        .unwrap();
    let trust = role
        .role()
        .unwrap()
        .assume_role_policy_document()
        .unwrap()
        .to_string();
    assert!(trust.contains("ec2.amazonaws.com"), "{trust}");
    let policy = iam
        .get_role_policy()
        .role_name("edgectl-default-server")
        .policy_name("edgectl-server")
        .send()
        .await
        .unwrap()
        .policy_document()
        .to_string();
    let policy = percent_decode(&policy);
    for needle in [
        "ec2:DescribeInstances",
        "ssm:GetParameter",
        "arn:aws:ssm:eu-west-1:123456789012:parameter/infrastructure/certificates/*",
    ] {
        assert!(policy.contains(needle), "{needle}: {policy}");
    }
    let attached: Vec<String> = iam
        .list_attached_role_policies()
        .role_name("edgectl-default-server")
        .send()
        .await
        .unwrap()
        .attached_policies()
        .iter()
        .filter_map(|p| p.policy_arn().map(String::from))
        .collect();
    assert_eq!(attached, ["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"]);
    let profile = iam
        .get_instance_profile()
        .instance_profile_name("edgectl-default-server")
        .send()
        .await
        .unwrap();
    let roles: Vec<&str> = profile
        .instance_profile()
        .unwrap()
        .roles()
        .iter()
        .map(|r| r.role_name())
        .collect();
    assert_eq!(roles, ["edgectl-default-server"]);

    // A second up: no changes, not one write.
    stand.sim.reset_requests();
    let started = Instant::now();
    let again = run(&stand, &["cloud", "up"], &env).await;
    let noop_time = started.elapsed();
    again.expect(0);
    assert_eq!(stand.writes(), Vec::<String>::new(), "a no-op up must not write");
    assert_no_change_of_ours(&again);
    assert!(again.stdout().contains("no changes"), "{}", again.stdout());
    let noop_requests = stand.sim.requests().len();
    let noop_ours: Vec<String> = stand
        .sim
        .requests()
        .iter()
        .map(|r| r.action())
        .filter(|a| {
            a.starts_with("elasticloadbalancing:")
                || a.starts_with("ec2:DescribeInstances")
                || (a.starts_with("iam:") && !a.contains("Cognito"))
        })
        .collect();

    // Status lists the load balancer and the servers.
    let status = run(&stand, &["--output", "json", "cloud", "status"], &env).await;
    status.expect(0);
    let doc = status.json();
    let rows = doc["resources"].as_array().unwrap();
    for address in [
        "ingress/nlb",
        "ingress/listener:4647",
        "iam/server-role",
        "servers/instance:2",
        "servers/targets:4646",
    ] {
        assert!(
            rows.iter().any(|r| r["address"] == address),
            "{address} missing: {doc}"
        );
    }

    // A server terminated by hand: plan shows its replacement, up makes it.
    let gone = live[1].instance_id().unwrap().to_string();
    ec2.terminate_instances()
        .instance_ids(&gone)
        .send()
        .await
        .unwrap();
    let plan = run(&stand, &["cloud", "plan", "--detailed-exitcode"], &env).await;
    plan.expect(2);
    let text = plan.stdout();
    assert!(text.contains("+ servers/instance:1"), "{text}");
    assert!(text.contains(&format!("{gone} is ")), "{text}");
    assert!(text.contains("~ servers/targets:4646"), "{text}");
    stand.sim.reset_requests();
    run(&stand, &["cloud", "up"], &env).await.expect(0);
    let writes = stand.writes();
    assert_eq!(count(&writes, "ec2:RunInstances"), 1, "{writes:?}");
    let live = verify_servers(&stand, &dns, 3).await;
    assert!(!ids(&live).contains(&gone));
    assert_eq!(targets(&elb).await, vec![ids(&live), ids(&live)]);
    stand.sim.reset_requests();
    assert_no_change_of_ours(run(&stand, &["cloud", "up"], &env).await.expect(0));
    assert_eq!(
        stand.writes(),
        Vec::<String>::new(),
        "converged after the replacement"
    );

    // Drift made by hand: a twin of the load balancer (moto makes one for
    // an existing name; AWS would not), a listener deleted, a server
    // stopped. One up repairs all three.
    let twin = elb
        .create_load_balancer()
        .name("edgectl-default")
        .r#type(LoadBalancerTypeEnum::Network)
        .scheme(LoadBalancerSchemeEnum::InternetFacing)
        .set_subnets(Some(lb_subnets.iter().cloned().collect()))
        .tags(
            aws_sdk_elasticloadbalancingv2::types::Tag::builder()
                .key("edgectl:deployment")
                .value("default")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let twin_arn = twin.load_balancers()[0].load_balancer_arn().unwrap().to_string();
    assert_eq!(our_lbs(&elb).await.len(), 2, "moto made a twin");
    let rpc_listener = listeners
        .listeners()
        .iter()
        .find(|l| l.port() == Some(4647))
        .unwrap()
        .listener_arn()
        .unwrap()
        .to_string();
    elb.delete_listener()
        .listener_arn(&rpc_listener)
        .send()
        .await
        .unwrap();
    let stopped = live[0].instance_id().unwrap().to_string();
    ec2.stop_instances().instance_ids(&stopped).send().await.unwrap();
    let plan = run(&stand, &["cloud", "plan"], &env).await;
    let text = plan.stdout();
    for line in [
        "- ingress/nlb#",
        "(a second load balancer with this deployment's name (twin))",
        "+ ingress/listener:4647",
        "~ servers/instance:0",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(
        !text.contains("servers/instance:1") && !text.contains("ingress/nlb ("),
        "{text}"
    );
    stand.sim.reset_requests();
    run(&stand, &["cloud", "up"], &env).await.expect(0);
    let writes = stand.writes();
    assert_eq!(
        count(&writes, "elasticloadbalancing:DeleteLoadBalancer"),
        1,
        "{writes:?}"
    );
    assert_eq!(count(&writes, "ec2:StartInstances"), 1, "{writes:?}");
    assert_eq!(count(&writes, "ec2:RunInstances"), 0, "{writes:?}");
    let left = our_lbs(&elb).await;
    assert_eq!(
        left,
        [lb.load_balancer_arn().unwrap().to_string()],
        "the twin ({twin_arn}) went, ours stayed"
    );
    let live = verify_servers(&stand, &dns, 3).await;
    assert_eq!(live[0].instance_id(), Some(stopped.as_str()));
    assert_eq!(
        live[0].state().and_then(|s| s.name()).map(|n| n.as_str()),
        Some("running")
    );
    assert_eq!(targets(&elb).await, vec![ids(&live), ids(&live)]);
    stand.sim.reset_requests();
    assert_no_change_of_ours(run(&stand, &["cloud", "up"], &env).await.expect(0));
    assert_eq!(
        stand.writes(),
        Vec::<String>::new(),
        "converged after the repairs"
    );

    // One server instead of three: the highest slots go, and slot 0 is
    // replaced because its user data says bootstrap_expect = 3.
    let path = stand.config_path();
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        config.replace("\"instance_count\": 3", "\"instance_count\": 1"),
    )
    .unwrap();
    let plan = run(&stand, &["cloud", "plan"], &env).await;
    let text = plan.stdout();
    let (slot2, slot1) = (
        text.find("- servers/instance:2")
            .unwrap_or_else(|| panic!("{text}")),
        text.find("- servers/instance:1")
            .unwrap_or_else(|| panic!("{text}")),
    );
    assert!(slot2 < slot1, "highest slot first:\n{text}");
    assert!(text.contains("-/+ servers/instance:0"), "{text}");
    assert!(text.contains("one at a time"), "{text}");
    run(&stand, &["cloud", "up"], &env).await.expect(0);
    let live = verify_servers(&stand, &dns, 1).await;
    assert_eq!(targets(&elb).await, vec![ids(&live), ids(&live)]);
    stand.sim.reset_requests();
    assert_no_change_of_ours(run(&stand, &["cloud", "up"], &env).await.expect(0));
    assert_eq!(stand.writes(), Vec::<String>::new(), "converged after scaling in");

    // down removes all of it; a second down is a no-op.
    stand.sim.reset_requests();
    run(&stand, &["cloud", "down", "--yes"], &env).await.expect(0);
    let down_requests = stand.sim.requests().len();
    let down_writes = stand.writes().len();
    assert!(our_lbs(&elb).await.is_empty(), "load balancer survived down");
    assert!(
        our_target_groups(&elb).await.is_empty(),
        "target groups survived down"
    );
    assert!(live_instances(&ec2).await.is_empty(), "instances survived down");
    assert!(iam
        .get_role()
        .role_name("edgectl-default-server")
        .send()
        .await
        .is_err());
    assert!(iam
        .get_instance_profile()
        .instance_profile_name("edgectl-default-server")
        .send()
        .await
        .is_err());
    assert!(ssm(&stand, ENDPOINT).await.is_none());
    // Nothing of the deployment is left anywhere in the account.
    assert_eq!(common::leftovers(&stand, "default").await, Vec::<String>::new());
    stand.sim.reset_requests();
    let again = run(&stand, &["cloud", "down", "--yes"], &env).await;
    again.expect(0);
    assert!(again.stdout().contains("no changes"), "{}", again.stdout());
    assert!(stand.writes().is_empty(), "{:?}", stand.writes());

    eprintln!(
        "requests: first up {first_up_requests}, no-op up {noop_requests} (0 writes) in {noop_time:?}, down {down_requests} ({down_writes} writes)"
    );
    eprintln!(
        "no-op up, ELBv2 + DescribeInstances + IAM: {} {noop_ours:?}",
        noop_ours.len()
    );
}
