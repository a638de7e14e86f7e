//! `policy replay`: recorded requests re-judged with a candidate set.

use http::{Method, StatusCode};
use tollgate::audit::replay::replay;
use tollgate::policy::{Decision, load_dir};
use tollgate::sandbox::seed::*;

use crate::harness::Harness;

on_both_backends! {
    async fn replay_lists_the_decisions_a_candidate_would_change(backend: Backend) {
        // Recorded under a set that only reads `after`.
        let recorded_rules = "[[rule]]\nid = \"no-hidden\"\ndeny = 'after.show_as_button == false'\nmessage = \"m\"\nmode = \"warn\"\n";
        let h = Harness::setup()
            .backend(backend)
            .rule(recorded_rules)
            .start()
            .await;
        let limited = h.patch(r#"{"organization_access_level":"limited"}"#).await;
        let full = h.patch(r#"{"organization_access_level":"full"}"#).await;
        assert_eq!(
            (limited.status, full.status),
            (StatusCode::OK, StatusCode::OK)
        );
        let create = h
            .send(
                Method::POST,
                &format!("/api/v2/organizations/{ORG_GLOBEX}/connections"),
                Some(&format!(r#"{{"connection_id":"{CON_OIDC}"}}"#)),
            )
            .await;
        assert_eq!(create.status, StatusCode::CREATED);
        let invalid = h.patch(r#"{"organization_access_level":"owner"}"#).await;
        assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
        h.audit.flush().await;

        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(
            dir.path().join("c.toml"),
            "[[rule]]\nid = \"no-full-access\"\ndeny = 'after.organization_access_level == \"full\"'\nmessage = \"m\"\n",
        )
        .expect("write");
        let candidate = load_dir(dir.path()).expect("candidate");
        let result = replay(&h.store, &candidate, 0).await.expect("replay");
        assert_eq!(
            result.judged, 3,
            "{backend:?}: invalid requests are not re-judged"
        );
        // The create is judged from its record too: a create has no `before`.
        assert_eq!(result.changed.len(), 1, "{backend:?}: {:?}", result.changed);
        let c = &result.changed[0];
        assert_eq!(c.exchange_id, full.audit_id());
        assert_eq!(c.recorded, Decision::Allow);
        assert_eq!(c.candidate, Some(Decision::Deny));
        assert_eq!(c.rules, vec!["no-full-access".to_owned()]);

        // A candidate reading context that was never fetched cannot be judged
        // from the record: it says so instead of guessing.
        std::fs::write(
            dir.path().join("c.toml"),
            "[[rule]]\nid = \"saml-only\"\ndeny = 'connection.strategy != \"samlp\"'\nmessage = \"m\"\n",
        )
        .expect("write");
        let candidate = load_dir(dir.path()).expect("candidate");
        let result = replay(&h.store, &candidate, 0).await.expect("replay");
        assert_eq!(result.changed.len(), 3, "{backend:?}: {:?}", result.changed);
        assert!(result.changed.iter().all(|c| c.candidate.is_none()));
    }
}
