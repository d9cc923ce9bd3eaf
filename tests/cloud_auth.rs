//! The `auth` component (Cognito) against moto through the simulator:
//! convergence, zero writes on a second `up`, outputs in SSM, one
//! invitation per user ever, a clean `down`, and a taken domain prefix.
//!
//! moto is lenient where AWS is not, and these tests do not lean on it:
//! it hands a taken domain prefix to a second pool (we check first), lets a
//! pool with a domain be deleted (we delete the domain first anyway), merges
//! UpdateUserPoolClient instead of resetting omitted fields (we always send
//! every field), and serves OIDC discovery at a non-AWS URL (we export the
//! AWS issuer URL and never fetch it).

mod common;

use aws_sdk_cognitoidentityprovider::Client as Idp;
use common::Stand;

const PARAMS: [&str; 4] = [
    "/infrastructure/cognito/user_pool_id",
    "/infrastructure/cognito/client_id",
    "/infrastructure/cognito/client_secret",
    "/infrastructure/cognito/domain",
];

async fn idp(stand: &Stand) -> Idp {
    Idp::new(&stand.sdk().await)
}

/// Ids of the pools tagged for `deployment`.
async fn pools(stand: &Stand, deployment: &str) -> Vec<String> {
    let idp = idp(stand).await;
    let mut ids = Vec::new();
    for p in idp
        .list_user_pools()
        .max_results(60)
        .send()
        .await
        .unwrap()
        .user_pools
        .unwrap_or_default()
    {
        let id = p.id.unwrap();
        let pool = idp
            .describe_user_pool()
            .user_pool_id(&id)
            .send()
            .await
            .unwrap()
            .user_pool
            .unwrap();
        if pool
            .user_pool_tags
            .unwrap_or_default()
            .get("edgectl:deployment")
            .map(String::as_str)
            == Some(deployment)
        {
            ids.push(id);
        }
    }
    ids
}

/// `cloud up` of this component and what it needs (the Nomad ACLs after it
/// need a Nomad this stand does not run).
async fn up(stand: &Stand, flags: &[&str]) -> common::Run {
    let args: Vec<&str> = flags
        .iter()
        .copied()
        .chain(["cloud", "up", "--only=auth"])
        .collect();
    let run = stand.edgectl(&args).await;
    run.expect(0);
    run
}

/// Plan lines and errors about this component's resources (other
/// components may mention Cognito's URLs in their own fields).
fn auth_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.contains(" cognito/") || l.contains(" ssm:/infrastructure/cognito/"))
        .collect()
}

/// The plan holds no change of this component.
async fn assert_no_auth_change(stand: &Stand, flags: &[&str]) {
    let args: Vec<&str> = flags.iter().copied().chain(["cloud", "plan"]).collect();
    let plan = stand.edgectl(&args).await;
    plan.expect(0);
    assert!(auth_lines(&plan.stdout()).is_empty(), "{}", plan.stdout());
}

/// The callbacks the client must have: the Nomad UI's behind the load
/// balancer once the ingress has one, then the CLI's.
async fn callbacks(stand: &Stand) -> Vec<String> {
    let mut urls = Vec::new();
    if let Some(dns) = param(stand, "/infrastructure/nomad/endpoint")
        .await
        .and_then(|p| p.value)
    {
        urls.push(format!("https://{dns}:4646/ui/settings/tokens"));
    }
    urls.push("http://localhost:4649/oidc/callback".to_string());
    urls
}

/// Calls to Cognito since the last reset, reads included.
fn cognito_calls(stand: &Stand) -> usize {
    stand
        .sim
        .requests()
        .iter()
        .filter(|r| r.action().starts_with("cognito-idp:"))
        .count()
}

fn count(writes: &[String], action: &str) -> usize {
    writes.iter().filter(|w| w.as_str() == action).count()
}

fn set_config(stand: &Stand, from: &str, to: &str) {
    let path = stand.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} not in the config");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

async fn param(stand: &Stand, name: &str) -> Option<aws_sdk_ssm::types::Parameter> {
    let ssm = aws_sdk_ssm::Client::new(&stand.sdk().await);
    ssm.get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .ok()
        .and_then(|p| p.parameter)
}

#[tokio::test]
async fn up_converges_writes_outputs_then_changes_nothing_and_down_removes_everything() {
    let stand = Stand::start().await;

    let plan = stand.edgectl(&["cloud", "plan", "--detailed-exitcode"]).await;
    plan.expect(2);
    let text = plan.stdout();
    for line in [
        "+ cognito/user-pool",
        "+ cognito/domain",
        "+ cognito/client",
        "+ cognito/group:engineering",
        "+ cognito/user:admin",
        "+ cognito/membership:admin/engineering",
        "+ ssm:/infrastructure/cognito/client_secret",
    ] {
        assert!(text.contains(line), "{line} missing from the plan:\n{text}");
    }
    assert!(stand.writes().is_empty(), "plan wrote: {:?}", stand.writes());

    stand.sim.reset_requests();
    up(&stand, &[]).await;
    let writes = stand.writes();
    let first_up = (stand.sim.requests().len(), cognito_calls(&stand));
    let cognito_writes: Vec<&String> = writes.iter().filter(|w| w.starts_with("cognito-idp:")).collect();
    assert_eq!(
        cognito_writes,
        [
            "cognito-idp:CreateUserPool",
            "cognito-idp:CreateUserPoolDomain",
            "cognito-idp:CreateUserPoolClient",
            "cognito-idp:CreateGroup",
            "cognito-idp:AdminCreateUser",
            "cognito-idp:AdminAddUserToGroup",
        ],
        "{writes:?}"
    );

    // Exactly one pool, found by its tag, holding everything.
    let ids = pools(&stand, "default").await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let pool = &ids[0];
    let idp = idp(&stand).await;
    let described = idp
        .describe_user_pool()
        .user_pool_id(pool)
        .send()
        .await
        .unwrap()
        .user_pool
        .unwrap();
    assert_eq!(described.name.as_deref(), Some("administrator"));
    assert_eq!(described.domain.as_deref(), Some("robot-fleet-7"));
    let domain = idp
        .describe_user_pool_domain()
        .domain("robot-fleet-7")
        .send()
        .await
        .unwrap()
        .domain_description
        .unwrap();
    assert_eq!(domain.user_pool_id.as_deref(), Some(pool.as_str()));

    let clients = idp
        .list_user_pool_clients()
        .user_pool_id(pool)
        .max_results(60)
        .send()
        .await
        .unwrap()
        .user_pool_clients
        .unwrap_or_default();
    assert_eq!(clients.len(), 1);
    let client = idp
        .describe_user_pool_client()
        .user_pool_id(pool)
        .client_id(clients[0].client_id.as_deref().unwrap())
        .send()
        .await
        .unwrap()
        .user_pool_client
        .unwrap();
    assert_eq!(client.client_name.as_deref(), Some("edgectl-default"));
    let flows: Vec<&str> = client.allowed_o_auth_flows().iter().map(|f| f.as_str()).collect();
    assert_eq!(flows, ["code", "implicit"]);
    assert!(client
        .allowed_o_auth_scopes()
        .contains(&"aws.cognito.signin.user.admin".to_string()));
    assert_eq!(client.callback_urls(), callbacks(&stand).await);
    assert_eq!(client.allowed_o_auth_flows_user_pool_client, Some(true));
    let secret = client.client_secret.clone().expect("a client secret");

    idp.get_group()
        .user_pool_id(pool)
        .group_name("engineering")
        .send()
        .await
        .unwrap();
    let user = idp
        .admin_get_user()
        .user_pool_id(pool)
        .username("admin")
        .send()
        .await
        .unwrap();
    assert!(user
        .user_attributes()
        .iter()
        .any(|a| a.name == "email" && a.value.as_deref() == Some("ops@example.com")));
    let groups = idp
        .admin_list_groups_for_user()
        .user_pool_id(pool)
        .username("admin")
        .send()
        .await
        .unwrap()
        .groups
        .unwrap_or_default();
    assert!(groups
        .iter()
        .any(|g| g.group_name.as_deref() == Some("engineering")));

    // Outputs: ids, the hosted domain, and the secret as a SecureString.
    assert_eq!(
        param(&stand, PARAMS[0]).await.unwrap().value.as_deref(),
        Some(pool.as_str())
    );
    assert_eq!(param(&stand, PARAMS[1]).await.unwrap().value, client.client_id);
    let stored = param(&stand, PARAMS[2]).await.unwrap();
    assert_eq!(
        stored.r#type,
        Some(aws_sdk_ssm::types::ParameterType::SecureString)
    );
    assert_eq!(stored.value.as_deref(), Some(secret.as_str()));
    assert_eq!(
        param(&stand, PARAMS[3]).await.unwrap().value.as_deref(),
        Some("robot-fleet-7.auth.eu-west-1.amazoncognito.com")
    );

    // A second up: no changes, no write call.
    stand.sim.reset_requests();
    up(&stand, &[]).await;
    assert_eq!(stand.writes(), Vec::<String>::new(), "a no-op up must not write");
    let noop_up = (stand.sim.requests().len(), cognito_calls(&stand));
    assert_no_auth_change(&stand, &[]).await;

    // Status shows the resources, never the secret.
    let status = stand.edgectl(&["--output", "json", "cloud", "status"]).await;
    status.expect(0);
    let doc = status.json();
    let rows = doc["resources"].as_array().unwrap();
    for address in [
        "cognito/user-pool",
        "cognito/domain",
        "cognito/client",
        "cognito/group:engineering",
        "cognito/user:admin",
        "ssm:/infrastructure/cognito/client_secret",
    ] {
        assert!(
            rows.iter().any(|r| r["address"] == address),
            "{address} missing: {doc}"
        );
    }
    assert!(
        !status.stdout().contains(&secret),
        "status leaked the client secret"
    );
    let human = stand.edgectl(&["cloud", "status"]).await;
    assert!(
        !human.stdout().contains(&secret),
        "status leaked the client secret"
    );

    stand.sim.reset_requests();
    stand.edgectl(&["cloud", "down", "--yes"]).await.expect(0);
    let writes = stand.writes();
    let down = (stand.sim.requests().len(), cognito_calls(&stand));
    let domain_at = writes
        .iter()
        .position(|w| w == "cognito-idp:DeleteUserPoolDomain")
        .expect("the domain is deleted");
    let pool_at = writes
        .iter()
        .position(|w| w == "cognito-idp:DeleteUserPool")
        .expect("the pool is deleted");
    assert!(domain_at < pool_at, "the domain goes first: {writes:?}");
    assert!(pools(&stand, "default").await.is_empty());
    let domain = idp
        .describe_user_pool_domain()
        .domain("robot-fleet-7")
        .send()
        .await
        .unwrap()
        .domain_description;
    assert!(
        domain.and_then(|d| d.user_pool_id).is_none(),
        "the domain survived down"
    );
    for name in PARAMS {
        assert!(param(&stand, name).await.is_none(), "{name} survived down");
    }

    stand.sim.reset_requests();
    let again = stand.edgectl(&["cloud", "down", "--yes"]).await;
    again.expect(0);
    assert!(auth_lines(&again.stdout()).is_empty(), "{}", again.stdout());
    assert!(stand.writes().is_empty(), "{:?}", stand.writes());

    eprintln!(
        "requests (all, cognito-idp): first up {first_up:?}, no-op up {noop_up:?} (0 writes), down {down:?}"
    );
}

#[tokio::test]
async fn people_are_invited_once_and_never_deleted() {
    let stand = Stand::start().await;
    up(&stand, &[]).await;
    let pool = pools(&stand, "default").await.remove(0);
    let idp = idp(&stand).await;

    // Someone removed the admin from the group: re-added, not re-invited.
    idp.admin_remove_user_from_group()
        .user_pool_id(&pool)
        .username("admin")
        .group_name("engineering")
        .send()
        .await
        .unwrap();
    stand.sim.reset_requests();
    up(&stand, &[]).await;
    assert_eq!(stand.writes(), ["cognito-idp:AdminAddUserToGroup"]);

    // A new email is updated in place: no invitation.
    set_config(&stand, "ops@example.com", "admin@example.com");
    let plan = stand.edgectl(&["cloud", "plan"]).await;
    plan.expect(0);
    assert!(
        plan.stdout()
            .contains("~ cognito/user:admin (email differs; not invited again)"),
        "{}",
        plan.stdout()
    );
    stand.sim.reset_requests();
    up(&stand, &[]).await;
    assert_eq!(stand.writes(), ["cognito-idp:AdminUpdateUserAttributes"]);
    let user = idp
        .admin_get_user()
        .user_pool_id(&pool)
        .username("admin")
        .send()
        .await
        .unwrap();
    assert!(user
        .user_attributes()
        .iter()
        .any(|a| a.name == "email" && a.value.as_deref() == Some("admin@example.com")));

    // A new username: the new user is invited, the old one is left alone
    // and shown as unmanaged.
    set_config(&stand, r#""username": "admin""#, r#""username": "alice""#);
    stand.sim.reset_requests();
    up(&stand, &[]).await;
    let writes = stand.writes();
    assert_eq!(
        writes,
        ["cognito-idp:AdminCreateUser", "cognito-idp:AdminAddUserToGroup"]
    );
    idp.admin_get_user()
        .user_pool_id(&pool)
        .username("admin")
        .send()
        .await
        .expect("the old user is not deleted");
    let status = stand.edgectl(&["--output", "json", "cloud", "status"]).await;
    let doc = status.json();
    let old = doc["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == "cognito/user:admin")
        .cloned()
        .unwrap_or_else(|| panic!("the old user is not reported: {doc}"));
    assert!(old["state"].as_str().unwrap().contains("unmanaged"), "{old}");

    // And still nothing to do.
    stand.sim.reset_requests();
    up(&stand, &[]).await;
    assert!(stand.writes().is_empty(), "{:?}", stand.writes());
    assert_eq!(count(&writes, "cognito-idp:AdminCreateUser"), 1);
}

#[tokio::test]
async fn client_settings_drift_is_repaired_with_every_field() {
    let stand = Stand::start().await;
    up(&stand, &[]).await;
    let pool = pools(&stand, "default").await.remove(0);
    let idp = idp(&stand).await;
    let id = param(&stand, PARAMS[1]).await.unwrap().value.unwrap();
    idp.update_user_pool_client()
        .user_pool_id(&pool)
        .client_id(&id)
        .allowed_o_auth_scopes("openid")
        .send()
        .await
        .unwrap();

    let plan = stand.edgectl(&["cloud", "plan"]).await;
    plan.expect(0);
    assert!(
        plan.stdout().contains("~ cognito/client (settings differ)"),
        "{}",
        plan.stdout()
    );
    stand.sim.reset_requests();
    up(&stand, &[]).await;
    assert_eq!(stand.writes(), ["cognito-idp:UpdateUserPoolClient"]);
    let client = idp
        .describe_user_pool_client()
        .user_pool_id(&pool)
        .client_id(&id)
        .send()
        .await
        .unwrap()
        .user_pool_client
        .unwrap();
    assert_eq!(client.allowed_o_auth_scopes().len(), 4);
    assert_eq!(client.callback_urls(), callbacks(&stand).await);
    stand.sim.reset_requests();
    up(&stand, &[]).await;
    assert!(stand.writes().is_empty(), "{:?}", stand.writes());
}

#[tokio::test]
async fn a_domain_prefix_taken_by_another_pool_is_refused_not_stolen() {
    let stand = Stand::start().await;
    up(&stand, &["--deployment", "blue"]).await;
    let blue = pools(&stand, "blue").await.remove(0);

    // Same prefix for green: the plan says why it will fail.
    let plan = stand.edgectl(&["--deployment", "green", "cloud", "plan"]).await;
    plan.expect(0);
    assert!(plan.stdout().contains("+ cognito/user-pool"), "{}", plan.stdout());
    assert!(
        plan.stdout().contains(&format!("belongs to user pool {blue}")),
        "{}",
        plan.stdout()
    );
    stand.sim.reset_requests();
    let up = stand.edgectl(&["--deployment", "green", "cloud", "up"]).await;
    up.expect(1);
    assert!(
        up.stderr().contains("authentication.domain_prefix"),
        "{}",
        up.stderr()
    );
    // moto would hand the prefix over; edgectl never asks.
    assert_eq!(count(&stand.writes(), "cognito-idp:CreateUserPoolDomain"), 0);
    let domain = idp(&stand)
        .await
        .describe_user_pool_domain()
        .domain("robot-fleet-7")
        .send()
        .await
        .unwrap()
        .domain_description
        .unwrap();
    assert_eq!(domain.user_pool_id.as_deref(), Some(blue.as_str()));

    // green's down removes green's pool and leaves blue's domain alone.
    stand
        .edgectl(&["--deployment", "green", "cloud", "down", "--yes"])
        .await
        .expect(0);
    assert!(pools(&stand, "green").await.is_empty());
    assert_eq!(pools(&stand, "blue").await, std::slice::from_ref(&blue));
    let domain = idp(&stand)
        .await
        .describe_user_pool_domain()
        .domain("robot-fleet-7")
        .send()
        .await
        .unwrap()
        .domain_description
        .unwrap();
    assert_eq!(domain.user_pool_id.as_deref(), Some(blue.as_str()));
}
