//! The `registry` component (the ECR repository `iot-publish`) against moto
//! through the simulator: plan, create with every setting and the URI in
//! SSM, zero writes on a second `up`, repair of a lifecycle policy and
//! settings changed behind our back, a forced `down` (images included) and
//! a second `down` that does nothing; a repository of that name that is not
//! ours is refused and left alone; another deployment gets its own.

mod common;

use aws_sdk_ecr::Client as Ecr;
use common::Stand;

const URI_PARAM: &str = "/infrastructure/ecr/iot-publish/uri";

async fn ecr(stand: &Stand) -> Ecr {
    Ecr::new(&stand.sdk().await)
}

async fn describe(stand: &Stand, name: &str) -> Option<aws_sdk_ecr::types::Repository> {
    ecr(stand)
        .await
        .describe_repositories()
        .repository_names(name)
        .send()
        .await
        .ok()
        .and_then(|o| o.repositories?.into_iter().next())
}

async fn lifecycle(stand: &Stand, name: &str) -> Option<serde_json::Value> {
    let text = ecr(stand)
        .await
        .get_lifecycle_policy()
        .repository_name(name)
        .send()
        .await
        .ok()?
        .lifecycle_policy_text?;
    Some(serde_json::from_str(&text).unwrap())
}

/// ECR calls since the last reset that change something.
fn ecr_writes(stand: &Stand) -> Vec<String> {
    stand
        .writes()
        .into_iter()
        .filter(|w| w.starts_with("ecr:"))
        .collect()
}

fn registry_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.contains(" ecr/") || l.contains(" ssm:/infrastructure/ecr/"))
        .collect()
}

#[tokio::test]
async fn up_creates_converges_repairs_drift_and_down_removes_it_with_its_images() {
    let stand = Stand::start().await;

    // An empty account: the whole-cloud plan lists the registry's three
    // resources, and writes nothing.
    let plan = stand.edgectl(&["cloud", "plan", "--detailed-exitcode"]).await;
    plan.expect(2);
    let text = plan.stdout();
    assert_eq!(
        registry_lines(&text),
        [
            "  + ecr/repository:iot-publish (missing)",
            "  + ecr/lifecycle-policy:iot-publish (missing)",
            "  + ssm:/infrastructure/ecr/iot-publish/uri (missing)",
        ],
        "{text}"
    );
    for field in [
        "      name: \"iot-publish\"",
        "      scan_on_push: \"true\"",
        "      tag_mutability: \"MUTABLE\"",
        "      encryption: \"AES256\"",
        "      uri: (known after apply)",
        "      keep: \"the last 20 images\"",
    ] {
        assert!(text.contains(field), "{field} missing from the plan:\n{text}");
    }
    assert!(stand.writes().is_empty(), "plan wrote: {:?}", stand.writes());

    // `up --only registry` needs nothing else: exactly its own writes.
    stand.sim.reset_requests();
    stand.edgectl(&["cloud", "up", "--only=registry"]).await.expect(0);
    assert_eq!(
        stand.writes(),
        [
            "ecr:CreateRepository",
            "ecr:PutLifecyclePolicy",
            "ssm:PutParameter"
        ]
    );
    let repo = describe(&stand, "iot-publish")
        .await
        .expect("the repository exists");
    assert_eq!(
        repo.image_scanning_configuration.map(|c| c.scan_on_push),
        Some(true)
    );
    assert_eq!(
        repo.image_tag_mutability
            .map(|m| m.as_str().to_string())
            .as_deref(),
        Some("MUTABLE")
    );
    assert_eq!(
        repo.encryption_configuration
            .map(|c| c.encryption_type.as_str().to_string())
            .as_deref(),
        Some("AES256")
    );
    let tags = ecr(&stand)
        .await
        .list_tags_for_resource()
        .resource_arn(repo.repository_arn.clone().unwrap())
        .send()
        .await
        .unwrap()
        .tags
        .unwrap_or_default();
    assert!(
        tags.iter()
            .any(|t| t.key == "edgectl:deployment" && t.value == "default"),
        "{tags:?}"
    );
    let policy = lifecycle(&stand, "iot-publish")
        .await
        .expect("a lifecycle policy");
    assert_eq!(policy["rules"][0]["selection"]["countNumber"], 20, "{policy}");
    assert_eq!(policy["rules"][0]["selection"]["countType"], "imageCountMoreThan");
    assert_eq!(policy["rules"][0]["action"]["type"], "expire");
    let uri = repo.repository_uri.unwrap();
    assert!(
        uri.ends_with(".dkr.ecr.eu-west-1.amazonaws.com/iot-publish"),
        "{uri}"
    );
    assert_eq!(
        common::ssm(&stand, URI_PARAM).await.as_deref(),
        Some(uri.as_str())
    );

    // A second `up` changes nothing and writes nothing.
    stand.sim.reset_requests();
    let again = stand.edgectl(&["cloud", "up", "--only=registry"]).await;
    again.expect(0);
    assert!(again.stdout().contains("no changes"), "{}", again.stdout());
    assert!(stand.writes().is_empty(), "second up wrote: {:?}", stand.writes());

    // Drift behind our back: another lifecycle policy, immutable tags. The
    // plan names each, `up` repairs exactly those. (Scanning turned off is
    // a unit test only: the SDK leaves `scanOnPush: false` out of the
    // request, and moto then keeps the old setting.)
    let client = ecr(&stand).await;
    client
        .put_lifecycle_policy()
        .repository_name("iot-publish")
        .lifecycle_policy_text(
            r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":5},"action":{"type":"expire"}}]}"#,
        )
        .send()
        .await
        .unwrap();
    client
        .put_image_tag_mutability()
        .repository_name("iot-publish")
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::Immutable)
        .send()
        .await
        .unwrap();
    let drift = stand
        .edgectl(&["cloud", "plan", "--only=registry", "--detailed-exitcode"])
        .await;
    drift.expect(2);
    let text = drift.stdout();
    for line in [
        "  ~ ecr/repository:iot-publish (tags must be mutable (the job runs `latest`))",
        "      tag_mutability: \"IMMUTABLE\" -> \"MUTABLE\"",
        "  ~ ecr/lifecycle-policy:iot-publish (policy differs)",
        "      keep: \"the last 5 images\" -> \"the last 20 images\"",
    ] {
        assert!(text.contains(line), "{line} missing from the plan:\n{text}");
    }
    stand.sim.reset_requests();
    stand.edgectl(&["cloud", "up", "--only=registry"]).await.expect(0);
    assert_eq!(
        stand.writes(),
        ["ecr:PutImageTagMutability", "ecr:PutLifecyclePolicy"]
    );
    assert_eq!(
        lifecycle(&stand, "iot-publish").await.unwrap()["rules"][0]["selection"]["countNumber"],
        20
    );
    stand.sim.reset_requests();
    let settled = stand
        .edgectl(&["cloud", "plan", "--only=registry", "--detailed-exitcode"])
        .await;
    settled.expect(0);
    assert!(stand.writes().is_empty());

    // Status names the repository and its URI.
    let status = stand.edgectl(&["cloud", "status", "--only=registry"]).await;
    status.expect(0);
    assert!(
        status.stdout().contains("ecr/repository:iot-publish"),
        "{}",
        status.stdout()
    );
    assert!(status.stdout().contains(&uri), "{}", status.stdout());

    // An image in it: `down` deletes the repository anyway (forced), and
    // its plan says so.
    client
        .put_image()
        .repository_name("iot-publish")
        .image_tag("latest")
        .image_manifest(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[]}"#,
        )
        .send()
        .await
        .unwrap();
    stand.sim.reset_requests();
    let down = stand
        .edgectl(&["cloud", "down", "--only=registry", "--yes"])
        .await;
    down.expect(0);
    let text = down.stdout();
    assert!(
        text.contains("- ecr/repository:iot-publish (cloud down; forced: the images in it are deleted too)"),
        "{text}"
    );
    assert_eq!(ecr_writes(&stand), ["ecr:DeleteRepository"]);
    assert!(describe(&stand, "iot-publish").await.is_none());
    assert_eq!(common::ssm(&stand, URI_PARAM).await, None);
    assert_eq!(common::leftovers(&stand, "default").await, Vec::<String>::new());

    // A second `down` has nothing to do.
    stand.sim.reset_requests();
    let again = stand
        .edgectl(&["cloud", "down", "--only=registry", "--yes"])
        .await;
    again.expect(0);
    assert!(again.stdout().contains("no changes"), "{}", again.stdout());
    assert!(
        stand.writes().is_empty(),
        "second down wrote: {:?}",
        stand.writes()
    );
}

#[tokio::test]
async fn someone_elses_repository_is_refused_and_left_alone_and_other_deployments_get_their_own() {
    let stand = Stand::start().await;
    let client = ecr(&stand).await;
    // Made by hand, without our tag.
    client
        .create_repository()
        .repository_name("iot-publish")
        .send()
        .await
        .unwrap();

    let plan = stand.edgectl(&["cloud", "plan", "--only=registry"]).await;
    plan.expect(0);
    assert!(
        plan.stdout().contains(
            "  + ecr/repository:iot-publish (iot-publish exists without an edgectl:deployment tag; apply will refuse to adopt it)"
        ),
        "{}",
        plan.stdout()
    );

    stand.sim.reset_requests();
    let up = stand.edgectl(&["cloud", "up", "--only=registry"]).await;
    up.expect(1);
    let err = up.stderr();
    assert!(
        err.contains("ECR repository iot-publish exists without an edgectl:deployment tag (not edgectl:deployment=default)"),
        "{err}"
    );
    assert!(
        err.contains("hint: edgectl does not adopt repositories it did not create"),
        "{err}"
    );
    assert!(ecr_writes(&stand).is_empty(), "{:?}", stand.writes());
    assert_eq!(common::ssm(&stand, URI_PARAM).await, None);

    // `down` leaves it where it is.
    let down = stand
        .edgectl(&["cloud", "down", "--only=registry", "--yes"])
        .await;
    down.expect(0);
    assert!(down.stdout().contains("no changes"), "{}", down.stdout());
    assert!(describe(&stand, "iot-publish").await.is_some());
    let status = stand.edgectl(&["cloud", "status", "--only=registry"]).await;
    status.expect(0);
    assert!(
        status
            .stdout()
            .contains("not ours (without an edgectl:deployment tag)"),
        "{}",
        status.stdout()
    );

    // Deployment `blue` has its own repository and output, next to the
    // foreign one, and removes only its own.
    stand
        .edgectl(&["--deployment", "blue", "cloud", "up", "--only=registry"])
        .await
        .expect(0);
    let blue = describe(&stand, "blue/iot-publish")
        .await
        .expect("blue's repository");
    let uri = blue.repository_uri.unwrap();
    assert!(uri.ends_with("/blue/iot-publish"), "{uri}");
    assert_eq!(
        common::ssm(&stand, "/edgectl/blue/infrastructure/ecr/iot-publish/uri")
            .await
            .as_deref(),
        Some(uri.as_str())
    );
    stand
        .edgectl(&[
            "--deployment",
            "blue",
            "cloud",
            "down",
            "--only=registry",
            "--yes",
        ])
        .await
        .expect(0);
    assert!(describe(&stand, "blue/iot-publish").await.is_none());
    assert!(describe(&stand, "iot-publish").await.is_some());
    assert_eq!(common::leftovers(&stand, "blue").await, Vec::<String>::new());
}
