//! One exchange: what is known of a request as it goes through the
//! pipeline. Each phase of `proxy.rs` adds what it established, through the
//! methods here; `audit/events.rs` records it.

use chrono::{DateTime, Utc};
use http::{Request, header};
use serde_json::value::RawValue;

use crate::identity::Caller;
use crate::policy::input::Request as RequestVariable;
use crate::policy::{Decision, Judgement, RuleInput};
use crate::route::{self, Governed, Operation};
use crate::schema::{OrgRef, Validated};
use crate::server::Peer;

/// What a request was classified as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Class {
    /// Refused before it could be classified.
    #[default]
    Unclassified,
    Governed(Operation),
    /// Everything else, under `routes.other`: a write names its operation
    /// from the registry (`client.update`) where it has one.
    Other(Option<&'static str>),
}

impl Class {
    /// The `operation` the record and the metrics show.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Class::Unclassified => None,
            Class::Governed(op) => Some(op.id()),
            Class::Other(op) => Some(op.unwrap_or("other")),
        }
    }
}

/// One request, from its arrival to its answer.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    /// Its audit id (a UUIDv7), on every answer and every event.
    pub id: String,
    pub time: DateTime<Utc>,
    pub method: String,
    /// The target as sent, query values redacted; the canonical path once
    /// a governed request is classified.
    pub path: String,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub class: Class,
    /// The organization and connection the record is indexed by.
    pub org_id: Option<String>,
    pub connection_id: Option<String>,
    pub caller: Caller,
    /// The judged body as forwarded; for a body that could not be parsed,
    /// its text (a JSON string).
    pub request_body: Option<Box<RawValue>>,
    pub unknown_fields: Vec<String>,
    /// What the rules read.
    pub input: Option<RuleInput>,
    /// What they found.
    pub judgement: Option<Judgement>,
    /// What was decided, once it is: the record's `decision`.
    pub decision: Option<Decision>,
    /// The approval asked for (a denial) or used (`approved`).
    pub approval: Option<ApprovalNote>,
    /// The association lock could not be proved held once the tenant had
    /// answered: the change may have landed unserialised.
    pub lock_lost: bool,
    /// Its decision is on record (written before the forward).
    pub decision_recorded: bool,
}

/// An approval, as an exchange's record names it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ApprovalNote {
    pub id: String,
    /// `pending` (asked for by this denial) or `used` (let this through).
    pub status: &'static str,
    pub expires: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The approvable rules it covers.
    pub rules: Vec<String>,
}

impl ApprovalNote {
    /// How an exchange's record names a stored approval.
    pub fn of(a: crate::audit::approvals::Approval, status: &'static str) -> ApprovalNote {
        ApprovalNote {
            id: a.id,
            status,
            expires: a.expires,
            approver: a.approver,
            reason: a.reason,
            rules: a.rules,
        }
    }
}

impl Exchange {
    /// What is known of a request before any phase runs.
    pub fn start<B>(req: &Request<B>) -> Exchange {
        let header = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Exchange {
            id: uuid::Uuid::now_v7().to_string(),
            time: Utc::now(),
            method: req.method().to_string(),
            // Recorded and logged without query-string values (secrets).
            path: req
                .uri()
                .path_and_query()
                .map(|pq| route::redact_target(pq.as_str()))
                .unwrap_or_else(|| "/".into()),
            source_ip: req.extensions().get::<Peer>().map(|p| p.0.ip().to_string()),
            user_agent: header(header::USER_AGENT),
            ..Exchange::default()
        }
    }

    /// A governed request: its operation, canonical path and the ids its
    /// path names.
    pub fn classified(&mut self, route: &Governed) {
        self.class = Class::Governed(route.operation);
        self.path = route.path.clone();
        // An SSO ticket's `{id}` is its self-service profile: its
        // organizations come from the body.
        if route.operation != Operation::SsoTicketCreate {
            self.org_id = route.id.clone();
        }
        self.connection_id = route.connection_id.clone();
    }

    /// What validation established: the judged body, and the
    /// organization and connection the record is indexed by when the path
    /// did not name them.
    pub fn validated(&mut self, validated: &Validated, text: Option<&str>) {
        self.request_body = text.and_then(|t| RawValue::from_string(t.to_owned()).ok());
        self.unknown_fields = validated.unknown_fields.clone();
        if let Some(first) = validated.changes.first() {
            if self.org_id.is_none()
                && let OrgRef::Existing(org) = &first.org
            {
                self.org_id = Some(org.clone());
            }
            if self.connection_id.is_none() {
                self.connection_id = first.connection_id.clone();
            }
        }
    }

    /// The `request` variable: canonical method and path.
    pub fn request_variable(&self, route: &Governed) -> RequestVariable {
        RequestVariable {
            method: Some(route.method.to_string()),
            path: Some(route.path.clone()),
            source_ip: self.source_ip.clone(),
            user_agent: self.user_agent.clone(),
        }
    }

    /// The rules' input, fetched: indexed by the organization's id, however
    /// the request named it.
    pub fn fetched(&mut self, input: RuleInput) {
        if let Some(id) = input.changes.first().and_then(|c| c.org.id.clone()) {
            self.org_id = Some(id);
        }
        self.input = Some(input);
    }

    /// The rules' judgement, and the decision it amounts to.
    pub fn judged(&mut self, judgement: Judgement) -> Decision {
        let decision = judgement.decision;
        self.judgement = Some(judgement);
        self.decision = Some(decision);
        decision
    }
}
