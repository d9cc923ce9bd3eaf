//! The `network` component against moto: `up` builds the VPC, subnets,
//! gateways, route tables and the servers' security group; a second `up`
//! writes nothing; drift shows in the plan and is repaired; `down` leaves
//! nothing tagged behind and a second `down` writes nothing.

mod common;

use aws_sdk_ec2::types::{Filter, NatGatewayState, Tag};
use common::Stand;

const TAG_KEY: &str = "edgectl:deployment";
/// This component alone (and, for `down`, whatever depends on it).
const NETWORK: &str = "--only=network";

fn ec2(sdk: &aws_config::SdkConfig) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(sdk)
}

fn ours(deployment: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{TAG_KEY}"))
        .values(deployment)
        .build()
}

fn tagged(tags: &[Tag], deployment: &str) -> bool {
    tags.iter()
        .any(|t| t.key() == Some(TAG_KEY) && t.value() == Some(deployment))
}

fn ec2_requests(stand: &Stand) -> (usize, usize) {
    let all: Vec<_> = stand
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.service.as_deref() == Some("ec2"))
        .collect();
    (all.len(), all.iter().filter(|r| r.is_write()).count())
}

/// Every resource of `deployment` that still exists, as `kind id`.
async fn leftovers(c: &aws_sdk_ec2::Client, deployment: &str) -> Vec<String> {
    let mut left = Vec::new();
    let f = || ours(deployment);
    for v in c.describe_vpcs().filters(f()).send().await.unwrap().vpcs() {
        if tagged(v.tags(), deployment) {
            left.push(format!("vpc {}", v.vpc_id().unwrap()));
        }
    }
    for s in c.describe_subnets().filters(f()).send().await.unwrap().subnets() {
        if tagged(s.tags(), deployment) {
            left.push(format!("subnet {}", s.subnet_id().unwrap()));
        }
    }
    for g in c
        .describe_internet_gateways()
        .filters(f())
        .send()
        .await
        .unwrap()
        .internet_gateways()
    {
        if tagged(g.tags(), deployment) {
            left.push(format!("igw {}", g.internet_gateway_id().unwrap()));
        }
    }
    for n in c
        .describe_nat_gateways()
        .filter(f())
        .send()
        .await
        .unwrap()
        .nat_gateways()
    {
        if tagged(n.tags(), deployment) && n.state() != Some(&NatGatewayState::Deleted) {
            left.push(format!("nat {} {:?}", n.nat_gateway_id().unwrap(), n.state()));
        }
    }
    for a in c
        .describe_addresses()
        .filters(f())
        .send()
        .await
        .unwrap()
        .addresses()
    {
        if tagged(a.tags(), deployment) {
            left.push(format!("eip {}", a.allocation_id().unwrap()));
        }
    }
    for rt in c
        .describe_route_tables()
        .filters(f())
        .send()
        .await
        .unwrap()
        .route_tables()
    {
        if tagged(rt.tags(), deployment) {
            left.push(format!("route table {}", rt.route_table_id().unwrap()));
        }
    }
    for g in c
        .describe_security_groups()
        .filters(f())
        .send()
        .await
        .unwrap()
        .security_groups()
    {
        if tagged(g.tags(), deployment) {
            left.push(format!("sg {}", g.group_id().unwrap()));
        }
    }
    left
}

/// `(protocol, from, to, cidr)` of every IPv4 ingress rule.
fn rules(g: &aws_sdk_ec2::types::SecurityGroup) -> Vec<(String, i32, i32, String)> {
    let mut out = Vec::new();
    for p in g.ip_permissions() {
        for r in p.ip_ranges() {
            out.push((
                p.ip_protocol().unwrap().to_string(),
                p.from_port().unwrap_or(-1),
                p.to_port().unwrap_or(-1),
                r.cidr_ip().unwrap().to_string(),
            ));
        }
        assert!(p.user_id_group_pairs().is_empty() && p.ipv6_ranges().is_empty());
    }
    out.sort();
    out
}

struct Built {
    vpc: String,
    public: Vec<String>,
    private: Vec<String>,
    igw: String,
    nat: String,
    sg: String,
}

/// Checks, with our own SDK calls, that the network is the reference one.
async fn verify_network(c: &aws_sdk_ec2::Client) -> Built {
    let vpcs = c.describe_vpcs().filters(ours("default")).send().await.unwrap();
    assert_eq!(vpcs.vpcs().len(), 1, "{vpcs:?}");
    let vpc = vpcs.vpcs()[0].vpc_id().unwrap().to_string();
    assert_eq!(vpcs.vpcs()[0].cidr_block(), Some("10.0.0.0/16"));
    assert!(vpcs.vpcs()[0]
        .tags()
        .iter()
        .any(|t| t.key() == Some("Name") && t.value() == Some("edgectl-default-vpc")));

    let subnets = c
        .describe_subnets()
        .filters(ours("default"))
        .send()
        .await
        .unwrap();
    let mut by_cidr: Vec<(String, String, String)> = subnets
        .subnets()
        .iter()
        .map(|s| {
            assert_eq!(s.vpc_id(), Some(vpc.as_str()));
            (
                s.cidr_block().unwrap().to_string(),
                s.availability_zone().unwrap().to_string(),
                s.subnet_id().unwrap().to_string(),
            )
        })
        .collect();
    by_cidr.sort();
    let layout: Vec<(&str, &str)> = by_cidr
        .iter()
        .map(|(c, az, _)| (c.as_str(), az.as_str()))
        .collect();
    assert_eq!(
        layout,
        [
            ("10.0.0.0/28", "eu-west-1a"),
            ("10.0.1.0/28", "eu-west-1b"),
            ("10.0.128.0/24", "eu-west-1a"),
            ("10.0.129.0/24", "eu-west-1b"),
            ("10.0.130.0/24", "eu-west-1c"),
            ("10.0.2.0/28", "eu-west-1c"),
        ]
    );
    let id_of = |cidr: &str| by_cidr.iter().find(|(c, _, _)| c == cidr).unwrap().2.clone();
    let public: Vec<String> = ["10.0.0.0/28", "10.0.1.0/28", "10.0.2.0/28"]
        .iter()
        .map(|c| id_of(c))
        .collect();
    let private: Vec<String> = ["10.0.128.0/24", "10.0.129.0/24", "10.0.130.0/24"]
        .iter()
        .map(|c| id_of(c))
        .collect();

    let igws = c
        .describe_internet_gateways()
        .filters(ours("default"))
        .send()
        .await
        .unwrap();
    assert_eq!(igws.internet_gateways().len(), 1);
    let igw = &igws.internet_gateways()[0];
    assert_eq!(igw.attachments().len(), 1);
    assert_eq!(igw.attachments()[0].vpc_id(), Some(vpc.as_str()));
    let igw = igw.internet_gateway_id().unwrap().to_string();

    let nats: Vec<_> = c
        .describe_nat_gateways()
        .filter(ours("default"))
        .send()
        .await
        .unwrap()
        .nat_gateways()
        .iter()
        .filter(|n| tagged(n.tags(), "default") && n.state() != Some(&NatGatewayState::Deleted))
        .cloned()
        .collect();
    assert_eq!(nats.len(), 1, "{nats:?}");
    assert_eq!(nats[0].state(), Some(&NatGatewayState::Available));
    assert_eq!(nats[0].subnet_id(), Some(public[0].as_str()));
    let nat = nats[0].nat_gateway_id().unwrap().to_string();

    let eips = c
        .describe_addresses()
        .filters(ours("default"))
        .send()
        .await
        .unwrap();
    // The NAT gateway's address is ours. (How many: see the callers; moto
    // keeps a deleted NAT gateway's address associated, AWS frees it.)
    let allocation = nats[0].nat_gateway_addresses()[0].allocation_id();
    assert!(
        eips.addresses().iter().any(|a| a.allocation_id() == allocation),
        "{eips:?}"
    );

    let rts = c
        .describe_route_tables()
        .filters(ours("default"))
        .send()
        .await
        .unwrap();
    assert_eq!(rts.route_tables().len(), 2);
    for rt in rts.route_tables() {
        let default = rt
            .routes()
            .iter()
            .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
            .expect("a default route");
        let mut subnets: Vec<String> = rt
            .associations()
            .iter()
            .filter_map(|a| a.subnet_id().map(str::to_string))
            .collect();
        subnets.sort();
        if default.nat_gateway_id().is_some() {
            assert_eq!(default.nat_gateway_id(), Some(nat.as_str()));
            let mut want = private.clone();
            want.sort();
            assert_eq!(subnets, want);
        } else {
            assert_eq!(default.gateway_id(), Some(igw.as_str()));
            let mut want = public.clone();
            want.sort();
            assert_eq!(subnets, want);
        }
    }

    let sgs = c
        .describe_security_groups()
        .filters(ours("default"))
        .send()
        .await
        .unwrap();
    assert_eq!(sgs.security_groups().len(), 1);
    let g = &sgs.security_groups()[0];
    assert_eq!(g.group_name(), Some("edgectl-default-servers"));
    assert_eq!(g.vpc_id(), Some(vpc.as_str()));
    let s = |p: &str, f: i32, t: i32, c: &str| (p.to_string(), f, t, c.to_string());
    assert_eq!(
        rules(g),
        [
            s("tcp", 4646, 4648, "0.0.0.0/0"),
            s("tcp", 4646, 4648, "10.0.0.0/16"),
            s("udp", 4648, 4648, "10.0.0.0/16"),
        ],
        "no SSH, only the Nomad ports"
    );
    Built {
        vpc,
        public,
        private,
        igw,
        nat,
        sg: g.group_id().unwrap().to_string(),
    }
}

#[tokio::test]
async fn up_builds_the_network_then_changes_nothing_and_down_removes_it() {
    let stand = Stand::start().await;
    let sdk = stand.sdk().await;
    let c = ec2(&sdk);

    let plan = stand.edgectl(&["cloud", "plan", NETWORK]).await;
    plan.expect(0);
    let text = plan.stdout();
    for line in [
        "+ network/vpc (no VPC tagged for this deployment)",
        "+ network/subnet/public-eu-west-1a",
        "+ network/subnet/private-eu-west-1c",
        "+ network/internet-gateway",
        "+ network/nat-eip",
        "+ network/nat-gateway",
        "+ network/route-table/public/route:0.0.0.0/0",
        "+ network/route-table/private/association:private-eu-west-1b",
        "+ network/security-group/servers/ingress:tcp:4646-4648:0.0.0.0/0",
    ] {
        assert!(text.contains(line), "{line} missing from the plan:\n{text}");
    }
    assert!(!text.contains(":22:"), "no SSH rule: {text}");

    stand.sim.reset_requests();
    stand.edgectl(&["cloud", "up", NETWORK]).await.expect(0);
    let (first_up, first_writes) = ec2_requests(&stand);
    let built = verify_network(&c).await;
    let eips = c
        .describe_addresses()
        .filters(ours("default"))
        .send()
        .await
        .unwrap();
    assert_eq!(eips.addresses().len(), 1, "{eips:?}");

    // A second up: not one write, to EC2 or anywhere.
    stand.sim.reset_requests();
    let again = stand.edgectl(&["cloud", "up", NETWORK]).await;
    again.expect(0);
    assert!(again.stdout().contains("no changes"), "{}", again.stdout());
    assert_eq!(stand.writes(), Vec::<String>::new(), "a no-op up must not write");
    let (noop_up, _) = ec2_requests(&stand);

    // Status shows the pieces with their ids.
    let status = stand
        .edgectl(&["--output", "json", "cloud", "status", NETWORK])
        .await;
    status.expect(0);
    let doc = status.json();
    let rows = doc["resources"].as_array().unwrap();
    for (address, id) in [
        ("network/vpc", &built.vpc),
        ("network/internet-gateway", &built.igw),
        ("network/nat-gateway", &built.nat),
        ("network/security-group/servers", &built.sg),
    ] {
        assert!(
            rows.iter()
                .any(|r| r["address"] == address && r["id"] == id.as_str()),
            "{address} {id} missing: {doc}"
        );
    }

    // Drift by hand: a rule revoked, SSH opened, the public default route
    // deleted, a private subnet gone.
    c.revoke_security_group_ingress()
        .group_id(&built.sg)
        .ip_permissions(
            aws_sdk_ec2::types::IpPermission::builder()
                .ip_protocol("udp")
                .from_port(4648)
                .to_port(4648)
                .ip_ranges(
                    aws_sdk_ec2::types::IpRange::builder()
                        .cidr_ip("10.0.0.0/16")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    c.authorize_security_group_ingress()
        .group_id(&built.sg)
        .ip_permissions(
            aws_sdk_ec2::types::IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(22)
                .to_port(22)
                .ip_ranges(
                    aws_sdk_ec2::types::IpRange::builder()
                        .cidr_ip("0.0.0.0/0")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let rts = c
        .describe_route_tables()
        .filters(ours("default"))
        .send()
        .await
        .unwrap();
    let public_rt = rts
        .route_tables()
        .iter()
        .find(|rt| {
            rt.routes()
                .iter()
                .any(|r| r.gateway_id() == Some(built.igw.as_str()))
        })
        .unwrap();
    c.delete_route()
        .route_table_id(public_rt.route_table_id().unwrap())
        .destination_cidr_block("0.0.0.0/0")
        .send()
        .await
        .unwrap();
    let private_rt = rts
        .route_tables()
        .iter()
        .find(|rt| rt.routes().iter().any(|r| r.nat_gateway_id().is_some()))
        .unwrap();
    let assoc = private_rt
        .associations()
        .iter()
        .find(|a| a.subnet_id() == Some(built.private[1].as_str()))
        .unwrap();
    c.disassociate_route_table()
        .association_id(assoc.route_table_association_id().unwrap())
        .send()
        .await
        .unwrap();
    c.delete_subnet()
        .subnet_id(&built.private[1])
        .send()
        .await
        .unwrap();

    let plan = stand
        .edgectl(&["cloud", "plan", NETWORK, "--detailed-exitcode"])
        .await;
    plan.expect(2);
    let text = plan.stdout();
    for line in [
        "+ network/security-group/servers/ingress:udp:4648:10.0.0.0/16 (rule missing from the security group)",
        "- network/security-group/servers/ingress:tcp:22:0.0.0.0/0",
        "+ network/route-table/public/route:0.0.0.0/0 (no default route via the internet gateway)",
        "+ network/subnet/private-eu-west-1b (no private subnet in eu-west-1b)",
        "+ network/route-table/private/association:private-eu-west-1b",
    ] {
        assert!(text.contains(line), "{line} missing from the plan:\n{text}");
    }
    assert!(!text.contains("network/vpc"), "{text}");
    stand.edgectl(&["cloud", "up", NETWORK]).await.expect(0);
    let repaired = verify_network(&c).await;
    assert_eq!(repaired.vpc, built.vpc);
    assert_eq!(repaired.public, built.public);
    assert_eq!(repaired.sg, built.sg);
    assert_ne!(repaired.private[1], built.private[1]);
    stand
        .edgectl(&["cloud", "plan", NETWORK, "--detailed-exitcode"])
        .await
        .expect(0);

    // down: nothing with the tag is left, the address is released.
    stand.sim.reset_requests();
    stand
        .edgectl(&["cloud", "down", NETWORK, "--yes"])
        .await
        .expect(0);
    let (down, down_writes) = ec2_requests(&stand);
    assert_eq!(leftovers(&c, "default").await, Vec::<String>::new());
    let writes = stand.writes();
    let pos = |a: &str| {
        writes
            .iter()
            .position(|w| w == a)
            .unwrap_or_else(|| panic!("{a} missing: {writes:?}"))
    };
    assert!(pos("ec2:DeleteNatGateway") < pos("ec2:ReleaseAddress"));
    assert!(pos("ec2:ReleaseAddress") < pos("ec2:DeleteSubnet"));
    assert!(pos("ec2:DeleteSubnet") < pos("ec2:DetachInternetGateway"));
    assert!(pos("ec2:DeleteSecurityGroup") < pos("ec2:DeleteVpc"));

    stand.sim.reset_requests();
    let again = stand.edgectl(&["cloud", "down", NETWORK, "--yes"]).await;
    again.expect(0);
    assert!(again.stdout().contains("no changes"), "{}", again.stdout());
    assert!(stand.writes().is_empty(), "{:?}", stand.writes());

    eprintln!(
        "network EC2 requests: first up {first_up} ({first_writes} writes), \
         no-op up {noop_up} (0 writes), down {down} ({down_writes} writes)"
    );
}

#[tokio::test]
async fn a_vpc_left_by_an_interrupted_up_is_adopted_not_duplicated() {
    let stand = Stand::start().await;
    let c = ec2(&stand.sdk().await);
    // As if `up` died right after CreateVpc.
    c.create_vpc()
        .cidr_block("10.0.0.0/16")
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Vpc)
                .tags(Tag::builder().key(TAG_KEY).value("default").build())
                .tags(Tag::builder().key("Name").value("edgectl-default-vpc").build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let plan = stand.edgectl(&["cloud", "plan", NETWORK]).await;
    plan.expect(0);
    assert!(!plan.stdout().contains("+ network/vpc"), "{}", plan.stdout());
    assert!(plan.stdout().contains("+ network/subnet/public-eu-west-1a"));
    stand.edgectl(&["cloud", "up", NETWORK]).await.expect(0);
    verify_network(&c).await;
}

#[tokio::test]
async fn down_names_what_still_uses_the_vpc_and_finishes_once_it_is_gone() {
    let stand = Stand::start().await;
    let c = ec2(&stand.sdk().await);
    stand.edgectl(&["cloud", "up", NETWORK]).await.expect(0);
    let built = verify_network(&c).await;
    // Someone else's subnet in our VPC, without our tag.
    let foreign = c
        .create_subnet()
        .vpc_id(&built.vpc)
        .cidr_block("10.0.200.0/24")
        .availability_zone("eu-west-1a")
        .send()
        .await
        .unwrap()
        .subnet()
        .unwrap()
        .subnet_id()
        .unwrap()
        .to_string();

    let failed = stand.edgectl(&["cloud", "down", NETWORK, "--yes"]).await;
    failed.expect(1);
    let err = failed.stderr();
    assert!(
        err.contains(&format!("VPC {} is still in use", built.vpc)),
        "{err}"
    );
    assert!(
        err.contains(&format!("subnet {foreign} (10.0.200.0/24)")),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    // Everything but the VPC is gone already.
    assert_eq!(leftovers(&c, "default").await, [format!("vpc {}", built.vpc)]);

    c.delete_subnet().subnet_id(&foreign).send().await.unwrap();
    stand
        .edgectl(&["cloud", "down", NETWORK, "--yes"])
        .await
        .expect(0);
    assert_eq!(leftovers(&c, "default").await, Vec::<String>::new());
}

#[tokio::test]
async fn deployments_get_separate_networks() {
    let stand = Stand::start().await;
    let c = ec2(&stand.sdk().await);
    stand
        .edgectl(&["--deployment", "blue", "cloud", "up", NETWORK])
        .await
        .expect(0);
    let plan = stand
        .edgectl(&["--deployment", "green", "cloud", "plan", NETWORK])
        .await;
    plan.expect(0);
    assert!(plan.stdout().contains("+ network/vpc"), "{}", plan.stdout());
    // Green's down touches none of blue's network.
    stand
        .edgectl(&["--deployment", "green", "cloud", "down", NETWORK, "--yes"])
        .await
        .expect(0);
    assert!(!leftovers(&c, "blue").await.is_empty());
}

#[tokio::test]
async fn a_nat_gateway_deleted_by_hand_is_recreated_and_the_route_repointed() {
    let stand = Stand::start().await;
    let c = ec2(&stand.sdk().await);
    stand.edgectl(&["cloud", "up", NETWORK]).await.expect(0);
    let built = verify_network(&c).await;
    // As if a `down` stopped right after deleting the NAT gateway.
    c.delete_nat_gateway()
        .nat_gateway_id(&built.nat)
        .send()
        .await
        .unwrap();

    let plan = stand.edgectl(&["cloud", "plan", NETWORK]).await;
    plan.expect(0);
    let text = plan.stdout();
    assert!(
        text.contains("+ network/nat-gateway (no NAT gateway tagged for this deployment)"),
        "{text}"
    );
    assert!(
        text.contains("~ network/route-table/private/route:0.0.0.0/0"),
        "{text}"
    );
    // AWS frees the address with the NAT gateway and it is reused; moto
    // keeps it associated, so a new one may be allocated here: not asserted.
    stand.edgectl(&["cloud", "up", NETWORK]).await.expect(0);
    let repaired = verify_network(&c).await;
    assert_ne!(repaired.nat, built.nat);
    stand
        .edgectl(&["cloud", "plan", NETWORK, "--detailed-exitcode"])
        .await
        .expect(0);
}
