//! Reading and compiling a policy directory. Every error names the file, the
//! rule and, for CEL, the position in the expression.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{Compiled, Mode, Needs, PolicySet, Rule, default_operations};
use crate::route::Operation;

/// A policy file or rule that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: String,
    pub rule: Option<String>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(rule) => write!(f, "{}: rule {rule}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for LoadError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rule: Vec<RuleDef>,
    #[serde(default)]
    exception: Vec<super::exception::ExceptionDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    id: String,
    description: Option<String>,
    operations: Option<Vec<String>>,
    when: Option<String>,
    deny: String,
    message: String,
    #[serde(default)]
    mode: Mode,
    /// Whether `tollgate scan` judges the tenant's associations by it
    /// (default: yes; a rule about changes, not states, says `false`).
    #[serde(default = "yes")]
    scan: bool,
    /// A request only approvable rules deny may be approved by a second
    /// person and then go through once.
    #[serde(default)]
    approvable: bool,
}

fn yes() -> bool {
    true
}

/// Loads every `*.toml` file directly in `dir` (not `tests/`), in name order.
/// Any error fails the whole set, so a half-loaded set is never put in
/// force; a missing or unreadable directory is an error naming its absolute
/// path (a guardrail must not run without its rules by accident).
pub fn load_dir(dir: &Path) -> Result<PolicySet, Vec<LoadError>> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            let message = if e.kind() == std::io::ErrorKind::NotFound {
                "the policy directory does not exist".to_owned()
            } else {
                format!("the policy directory cannot be read: {e}")
            };
            return Err(vec![LoadError {
                file: absolute(dir),
                rule: None,
                message,
            }]);
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match std::fs::read_to_string(&path) {
                Ok(text) => files.push((name, text)),
                Err(e) => {
                    return Err(vec![LoadError {
                        file: name,
                        rule: None,
                        message: e.to_string(),
                    }]);
                }
            }
        }
    }
    files.sort();
    let set = load_sources(&files)?;
    let failing = probe(&set);
    if !failing.is_empty() {
        return Err(failing);
    }
    Ok(set)
}

/// A path as the operator should look for it: absolute.
pub fn absolute(dir: &Path) -> String {
    std::path::absolute(dir)
        .unwrap_or_else(|_| dir.to_owned())
        .display()
        .to_string()
}

/// Compiles a set from (file name, contents) pairs.
pub fn load_sources(files: &[(String, String)]) -> Result<PolicySet, Vec<LoadError>> {
    let env = Arc::new(cel::Env::stdlib());
    let mut rules = Vec::new();
    let mut exceptions = Vec::new();
    let mut errors = Vec::new();
    let mut ids = HashSet::new();
    let mut empty_files = Vec::new();
    for (name, text) in files {
        let file: File = match toml::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                errors.push(LoadError {
                    file: name.clone(),
                    rule: None,
                    message: e.to_string().trim_end().to_owned(),
                });
                continue;
            }
        };
        if file.rule.is_empty() && file.exception.is_empty() {
            empty_files.push(name.clone());
        }
        for def in file.rule {
            let err = |message: String| LoadError {
                file: name.clone(),
                rule: Some(def.id.clone()),
                message,
            };
            if !ids.insert(def.id.clone()) {
                errors.push(err("duplicate rule id".into()));
                continue;
            }
            match compile_rule(&env, name, &def) {
                Ok(rule) => rules.push(rule),
                Err(message) => errors.push(err(message)),
            }
        }
        for def in file.exception {
            match def.compile(name) {
                Ok(e) => exceptions.push(e),
                Err(message) => errors.push(LoadError {
                    file: name.clone(),
                    rule: None,
                    message: format!("exception {}: {message}", def.id),
                }),
            }
        }
    }
    let mut exception_ids = HashSet::new();
    for e in &exceptions {
        if !exception_ids.insert(e.id.clone()) {
            errors.push(LoadError {
                file: e.file.clone(),
                rule: None,
                message: format!("exception {}: duplicate exception id", e.id),
            });
        }
        for r in &e.rules {
            if !rules.iter().any(|rule: &Rule| &rule.id == r) {
                errors.push(LoadError {
                    file: e.file.clone(),
                    rule: None,
                    message: format!("exception {}: no rule {r:?} to exempt", e.id),
                });
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(PolicySet {
        rules,
        version: version_of(files),
        files: files.iter().map(|(n, _)| n.clone()).collect(),
        exceptions,
        empty_files,
        env,
    })
}

/// Runs every enforce rule on one ordinary request of each operation it
/// applies to (the association at the tenant's defaults, a database
/// connection, a caller and a request with every field set): a rule that
/// fails to evaluate there fails on most real requests too — and a failing
/// enforce rule denies — so a policy directory holding one does not load
/// (`policy check`, `serve`, reloads). The usual causes: a variable that is
/// null for that operation (`before` on a create, `org.id` of a new
/// organization), a field read from `body` that a request need not carry,
/// a result that is not a boolean. Warn and dry-run rules that fail only
/// say so (their errors forward).
pub(crate) fn probe(set: &PolicySet) -> Vec<LoadError> {
    use super::Verdict;
    let mut failing: Vec<LoadError> = Vec::new();
    for op in Operation::ALL {
        if !set.rules.iter().any(|r| r.operations.contains(&op)) {
            continue;
        }
        let given = probe_request(op);
        let Ok(input) = super::testcases::input(&given) else {
            continue;
        };
        for result in super::evaluate(set, &input).results {
            let Verdict::Error(e) = &result.verdict else {
                continue;
            };
            if failing
                .iter()
                .any(|f| f.rule.as_deref() == Some(result.id.as_str()))
            {
                continue;
            }
            let Some(rule) = set
                .rules
                .iter()
                .find(|r| r.id == result.id && r.mode == Mode::Enforce)
            else {
                continue;
            };
            let hint = if e.contains("null_type") || e.contains("null") {
                " (before is null on creates, after on deletes, org.id for a new organization: guard with `before != null && …`)"
            } else if e.contains("No such key") {
                " (a field a request need not carry: test it with has(body.field), or read after)"
            } else if e.contains("expected a boolean") {
                " (deny and when must be true or false)"
            } else {
                ""
            };
            failing.push(LoadError {
                file: rule.file.clone(),
                rule: Some(rule.id.clone()),
                message: format!("fails on an ordinary {} request: {e}{hint}", op.id()),
            });
        }
    }
    failing
}

/// An ordinary request of `op`, as `policy test` would give it.
fn probe_request(op: Operation) -> super::testcases::Given {
    use serde_json::{Map, Value, json};
    let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
    let association = Value::Object(crate::association::tenant_defaults());
    let body = match op {
        Operation::OrganizationConnectionCreate
        | Operation::OrganizationEnabledConnectionCreate => {
            obj(json!({"connection_id": "con_probe"}))
        }
        Operation::OrganizationCreate => {
            obj(json!({"name": "probe", "enabled_connections": [{"connection_id": "con_probe"}]}))
        }
        Operation::SsoTicketCreate => obj(json!({
            "connection_id": "con_probe",
            "enabled_organizations": [{"organization_id": "org_probe"}]
        })),
        _ => Map::new(),
    };
    super::testcases::Given {
        operation: op.id().to_owned(),
        body,
        connection: obj(json!({"id": "con_probe", "name": "probe", "strategy": "auth0"})),
        org: obj(json!({"id": "org_probe", "name": "probe"})),
        before: (!op.is_create()).then(|| obj(association)),
        caller: obj(json!({
            "client_id": "probe", "subject": "probe", "grant_type": "client_credentials",
            "scopes": ["update:organizations"], "verified": true, "key": "probe",
        })),
        request: super::input::Request {
            method: Some("PATCH".into()),
            path: Some("/api/v2/probe".into()),
            source_ip: Some("192.0.2.1".into()),
            user_agent: Some("probe".into()),
        },
    }
}

fn compile_rule(env: &cel::Env, file: &str, def: &RuleDef) -> Result<Rule, String> {
    let id_ok = !def.id.is_empty()
        && def
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !id_ok {
        return Err("id must match [a-z0-9-]+".into());
    }
    let operations = match &def.operations {
        None => default_operations(),
        Some(ops) if ops.is_empty() => {
            return Err(
                "operations must not be empty (omit it for every create and update)".into(),
            );
        }
        Some(ops) => ops
            .iter()
            .map(|o| Operation::from_id(o).ok_or_else(|| crate::route::unknown_operation(o)))
            .collect::<Result<_, _>>()?,
    };
    if def.message.trim().is_empty() {
        return Err("message must not be empty".into());
    }
    let deny = compile(env, "deny", &def.deny)?;
    let when = def
        .when
        .as_deref()
        .map(|w| compile(env, "when", w))
        .transpose()?;
    let programs: Vec<&Compiled> = [Some(&deny), when.as_ref()].into_iter().flatten().collect();
    let needs = programs
        .iter()
        .fold(Needs::default(), |n, c| n.union(needs_of(&c.program)));
    let variables = super::VARIABLES
        .into_iter()
        .filter(|v| {
            programs
                .iter()
                .any(|c| c.program.references().has_variable(v))
        })
        .collect();
    Ok(Rule {
        id: def.id.clone(),
        description: def.description.clone(),
        operations,
        fields: fields_read(&def.deny),
        when,
        deny,
        message: def.message.clone(),
        mode: def.mode,
        scan: def.scan,
        approvable: def.approvable,
        file: file.to_owned(),
        needs,
        variables,
    })
}

fn compile(env: &cel::Env, key: &str, source: &str) -> Result<Compiled, String> {
    match env.compile(source) {
        Ok(program) => {
            // A misspelt variable would fail every evaluation (and so deny
            // every request): refuse it at load instead.
            let refs = program.references();
            let mut bound = Vec::new();
            comprehension_vars(program.expression(), &mut bound);
            if let Some(unknown) = refs
                .variables()
                .into_iter()
                .find(|v| !super::VARIABLES.contains(v) && !bound.contains(v))
            {
                return Err(format!(
                    "{key}: unknown variable {unknown} (known: {})",
                    super::VARIABLES.join(", ")
                ));
            }
            // A field the input never has (`after.organisation_access_level`)
            // or a value that is no verdict would also fail every evaluation.
            if let Some(problem) = shape_problem(program.expression(), &bound) {
                return Err(format!("{key}: {problem}"));
            }
            Ok(Compiled {
                source: source.to_owned(),
                program,
            })
        }
        Err(errors) => {
            let first = errors.errors.first();
            let message = match first {
                Some(e) => format!("{key}: line {}, column {}: {}", e.pos.0, e.pos.1 + 1, e.msg),
                None => format!("{key}: {errors}"),
            };
            Err(message)
        }
    }
}

/// The fields of the variables whose shape is fixed: `before` and `after`
/// are the association (every field, null where unset), `org` and
/// `connection` what the tenant says of them.
fn fields_of(variable: &str) -> Option<Vec<&'static str>> {
    match variable {
        "after" | "before" => Some(crate::association::FIELDS.iter().map(|f| f.name).collect()),
        "org" => Some(vec!["id", "name"]),
        "connection" => Some(vec!["id", "name", "is_database", "strategy"]),
        _ => None,
    }
}

/// Whether a field of a fixed-shape variable holds a boolean.
fn is_boolean_field(variable: &str, field: &str) -> bool {
    match variable {
        "after" | "before" => crate::association::field_named(field).is_some_and(|f| {
            matches!(
                f.ty,
                crate::association::Type::Bool | crate::association::Type::NullableOnUpdateBool
            )
        }),
        "connection" => field == "is_database",
        _ => false,
    }
}

/// What would make an expression fail on every input: a field of `after`,
/// `before`, `org` or `connection` that they never have (with the nearest
/// one it may have meant), or a whole expression that is a plain value
/// rather than a verdict (a string field, a number or string literal).
fn shape_problem(e: &cel::IdedExpr, bound: &[&str]) -> Option<String> {
    use cel::common::ast::{Expr, LiteralValue};
    let root = match &e.expr {
        Expr::Literal(LiteralValue::Boolean(_)) => None,
        Expr::Literal(_) => Some("the expression is a constant, not a boolean verdict".to_owned()),
        Expr::Select(s) => match &s.operand.expr {
            Expr::Ident(v)
                if !s.test
                    && !bound.contains(&v.as_str())
                    && fields_of(v).is_some_and(|f| f.contains(&s.field.as_str()))
                    && !is_boolean_field(v, &s.field) =>
            {
                Some(format!(
                    "{v}.{} is a value, not a boolean verdict (compare it, e.g. {v}.{} == \"…\")",
                    s.field, s.field
                ))
            }
            _ => None,
        },
        _ => None,
    };
    root.or_else(|| unknown_field(e, bound))
}

/// The first `variable.field` the expression reads that its variable never
/// has.
fn unknown_field(e: &cel::IdedExpr, bound: &[&str]) -> Option<String> {
    use cel::common::ast::{EntryExpr, Expr};
    match &e.expr {
        Expr::Select(s) => {
            if let Expr::Ident(v) = &s.operand.expr
                && !bound.contains(&v.as_str())
                && let Some(fields) = fields_of(v)
                && !fields.contains(&s.field.as_str())
            {
                let near = fields
                    .iter()
                    .min_by_key(|f| edit_distance(f, &s.field))
                    .filter(|f| edit_distance(f, &s.field) <= 3);
                let hint = match near {
                    Some(f) => format!(" (did you mean {v}.{f}?)"),
                    None => format!(" (its fields: {})", fields.join(", ")),
                };
                return Some(format!("{v}.{} is no field of {v}{hint}", s.field));
            }
            unknown_field(&s.operand, bound)
        }
        Expr::Call(call) => keyed_field(call, bound)
            .or_else(|| never_equal(call, bound))
            .or_else(|| {
                call.target
                    .iter()
                    .map(|t| &**t)
                    .chain(call.args.iter())
                    .find_map(|a| unknown_field(a, bound))
            }),
        Expr::List(l) => l.elements.iter().find_map(|x| unknown_field(x, bound)),
        Expr::Map(m) => m.entries.iter().find_map(|entry| match &entry.expr {
            EntryExpr::MapEntry(me) => {
                unknown_field(&me.key, bound).or_else(|| unknown_field(&me.value, bound))
            }
            EntryExpr::StructField(_) => None,
        }),
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .into_iter()
        .find_map(|x| unknown_field(x, bound)),
        Expr::Struct(_) | Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => None,
    }
}

/// `after["field"]` and `after.?field`: the field by its name, checked as
/// `after.field` is.
fn keyed_field(call: &cel::common::ast::CallExpr, bound: &[&str]) -> Option<String> {
    use cel::common::ast::{Expr, LiteralValue, operators};
    if call.func_name != operators::INDEX
        && call.func_name != operators::OPT_INDEX
        && call.func_name != operators::OPT_SELECT
    {
        return None;
    }
    let [operand, key] = call.args.as_slice() else {
        return None;
    };
    let (Expr::Ident(v), Expr::Literal(LiteralValue::String(field))) = (&operand.expr, &key.expr)
    else {
        return None;
    };
    let fields = fields_of(v).filter(|_| !bound.contains(&v.as_str()))?;
    let field: &str = field;
    if fields.contains(&field) {
        return None;
    }
    let near = fields
        .iter()
        .min_by_key(|f| edit_distance(f, field))
        .filter(|f| edit_distance(f, field) <= 3);
    Some(match near {
        Some(f) => format!("{v}[{field:?}] is no field of {v} (did you mean {v}.{f}?)"),
        None => format!(
            "{v}[{field:?}] is no field of {v} (its fields: {})",
            fields.join(", ")
        ),
    })
}

/// A comparison that can never hold: an access level against a value that
/// is none of the levels, a boolean field against a string or number, the
/// operation against an id that is no operation.
fn never_equal(call: &cel::common::ast::CallExpr, bound: &[&str]) -> Option<String> {
    use cel::common::ast::{Expr, LiteralValue, operators};
    if call.func_name != operators::EQUALS && call.func_name != operators::NOT_EQUALS {
        return None;
    }
    let [a, b] = call.args.as_slice() else {
        return None;
    };
    let (side, literal) = match (&a.expr, &b.expr) {
        (Expr::Literal(l), other) | (other, Expr::Literal(l)) => (other, l),
        _ => return None,
    };
    match side {
        Expr::Ident(v) if v == "operation" && !bound.contains(&"operation") => match literal {
            LiteralValue::String(id) if Operation::from_id(id).is_none() => Some(format!(
                "operation is never {:?}: {}",
                &**id,
                crate::route::unknown_operation(id)
            )),
            _ => None,
        },
        Expr::Select(s) => {
            let Expr::Ident(v) = &s.operand.expr else {
                return None;
            };
            if bound.contains(&v.as_str()) || !matches!(v.as_str(), "after" | "before") {
                return None;
            }
            let field = crate::association::field_named(&s.field)?;
            use crate::association::Type;
            match (field.ty, literal) {
                (Type::AccessLevel, LiteralValue::String(level))
                    if !crate::association::ACCESS_LEVELS.contains(&&**level) =>
                {
                    Some(format!(
                        "{v}.{} is never {:?}: it is one of {} (or null)",
                        s.field,
                        &**level,
                        crate::association::ACCESS_LEVELS.join(", ")
                    ))
                }
                (
                    Type::Bool | Type::NullableOnUpdateBool,
                    LiteralValue::Boolean(_) | LiteralValue::Null,
                ) => None,
                (Type::Bool | Type::NullableOnUpdateBool, _) => Some(format!(
                    "{v}.{} is a boolean: comparing it with a string or number never holds",
                    s.field
                )),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Names bound by macros (`exists(s, …)`, `all`, `map`, …): not variables
/// a rule reads from the request.
fn comprehension_vars<'a>(e: &'a cel::IdedExpr, out: &mut Vec<&'a str>) {
    use cel::common::ast::{EntryExpr, Expr};
    match &e.expr {
        Expr::Comprehension(c) => {
            out.push(&c.iter_var);
            if let Some(v) = &c.iter_var2 {
                out.push(v);
            }
            out.push(&c.accu_var);
            for sub in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                comprehension_vars(sub, out);
            }
        }
        Expr::Call(call) => {
            if let Some(t) = &call.target {
                comprehension_vars(t, out);
            }
            for a in &call.args {
                comprehension_vars(a, out);
            }
        }
        Expr::List(l) => l.elements.iter().for_each(|x| comprehension_vars(x, out)),
        Expr::Select(s) => comprehension_vars(&s.operand, out),
        Expr::Map(m) => {
            for entry in &m.entries {
                if let EntryExpr::MapEntry(me) = &entry.expr {
                    comprehension_vars(&me.key, out);
                    comprehension_vars(&me.value, out);
                }
            }
        }
        Expr::Struct(st) => {
            for entry in &st.entries {
                if let EntryExpr::StructField(f) = &entry.expr {
                    comprehension_vars(&f.value, out);
                }
            }
        }
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => {}
    }
}

fn needs_of(program: &cel::Program) -> Needs {
    let refs = program.references();
    Needs {
        org: refs.has_variable("org"),
        connection: refs.has_variable("connection"),
        before: refs.has_variable("before") || refs.has_variable("after"),
    }
}

/// The fields an expression reads as `after.<field>` or `body.<field>`.
fn fields_read(source: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for prefix in ["after.", "body."] {
        let mut rest = source;
        while let Some(i) = rest.find(prefix) {
            let preceded_by_ident = rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            let tail = &rest[i + prefix.len()..];
            let field: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !preceded_by_ident && !field.is_empty() && !out.contains(&field) {
                out.push(field);
            }
            rest = tail;
        }
    }
    out
}

/// The version of a set: SHA-256 over its files' names and contents.
pub fn version_of(files: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    for (name, text) in files {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}
