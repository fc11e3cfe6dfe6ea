//! The object model: oids, slots, the `parent*` delegation chain and cycle-safe lookup.
//!
//! Pure data and functions; nothing here knows about actors, QuickJS or the database. An object
//! is a bag of named slots. A slot holds a JSON value or a method. References to other objects
//! are JSON values of the form `{"$ref": "oid"}`, so a slot can hold one reference, a list of
//! them, or a structure containing them. `parent*` is a slot holding a list of references.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::error::{Result, TelosError};

/// The slot that holds an object's parents.
pub const PARENTS_SLOT: &str = "parent*";
/// The slot that holds an object's human name.
pub const NAME_SLOT: &str = "name";
/// The longest slot name accepted.
pub const MAX_SLOT_NAME: usize = 128;

/// The objects every world is awakened with, in creation order.
pub const PRIMORDIAL: [&str; 5] = [
    "traits_obj",
    "genesis_obj",
    "memory_manager",
    "backup_manager",
    "Retrievable",
];

/// Slots of the manager objects that hold their policy and results: written only by the
/// server itself (through the admin endpoints), never by a message.
pub const SYSTEM_SLOTS: [(&str, &[&str]); 1] = [(
    "backup_manager",
    &[
        "schedule",
        "retention",
        "last_full",
        "last_incremental",
        "last_verify",
        PARENTS_SLOT,
    ],
)];

/// The messages the manager objects answer natively; no slot may shadow them.
pub const NATIVE_MESSAGES: [(&str, &[&str]); 2] = [
    (
        "memory_manager",
        &["search", "count", "reindex", PARENTS_SLOT],
    ),
    ("backup_manager", &["list", "status", "backup", "verify"]),
];

/// Refuses a message's write to a manager object's policy slot or native message.
pub fn guard_system_slot(oid: &str, name: &str) -> Result<()> {
    let listed = |table: &[(&str, &[&str])]| {
        table
            .iter()
            .any(|(o, names)| *o == oid && names.contains(&name))
    };
    if listed(&SYSTEM_SLOTS) {
        return Err(TelosError::Forbidden(format!(
            "{oid}.{name} is server policy: change it through the admin API (e.g. PUT /api/backups/schedule or /api/backups/retention), not with a message"
        )));
    }
    if listed(&NATIVE_MESSAGES) {
        return Err(TelosError::Forbidden(format!(
            "{oid}.{name} is answered by the server itself and cannot be replaced"
        )));
    }
    Ok(())
}

/// The longest selector accepted.
pub const MAX_SELECTOR: usize = 128;

/// Checks a selector as given by a client or a method: an identifier (letters, digits, `_`, `$`,
/// not starting with a digit; a setter ends in `_`), at most [`MAX_SELECTOR`] characters.
pub fn validate_selector(selector: &str) -> Result<()> {
    let shown = || selector.chars().take(60).collect::<String>();
    if selector.is_empty() {
        return Err(TelosError::BadRequest("the selector is empty".into()));
    }
    if selector.len() > MAX_SELECTOR {
        return Err(TelosError::BadRequest(format!(
            "the selector {:?}… is longer than {MAX_SELECTOR} characters",
            shown()
        )));
    }
    let mut chars = selector.chars();
    let first = chars.next().expect("not empty");
    let ok = (first.is_ascii_alphabetic() || first == '_' || first == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if !ok {
        return Err(TelosError::BadRequest(format!(
            "the selector {:?} is not an identifier (letters, digits, _ and $, not starting with a digit)",
            shown()
        )));
    }
    Ok(())
}

/// A method: JavaScript source plus what we know about where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Method {
    /// `function name(self, ...args) { ... }`
    pub source: String,
    /// Who installed it: "user" (REST/WS), or later "kernel".
    #[serde(default = "default_origin")]
    pub origin: String,
    /// Seconds since the epoch when this version was installed.
    #[serde(default)]
    pub installed_at: u64,
    /// How the kernel made it: prompt, recalled memories, BRICK's answer, ALFRED's verdict,
    /// trial result, models, time per stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub provenance: Option<Json>,
    /// Earlier versions, oldest first (at most [`MAX_HISTORY`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<MethodVersion>,
}

/// How many earlier versions of a method are kept.
pub const MAX_HISTORY: usize = 10;

/// An earlier version of a method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MethodVersion {
    pub source: String,
    pub origin: String,
    pub installed_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub provenance: Option<Json>,
}

impl Method {
    /// A new method by `origin` with no history.
    pub fn new(source: impl Into<String>, origin: impl Into<String>) -> Method {
        Method {
            source: source.into(),
            origin: origin.into(),
            installed_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            provenance: None,
            history: Vec::new(),
        }
    }

    /// `self` replacing `old` (if it was a method): the old version joins the history.
    pub fn replacing(mut self, old: Option<&Slot>) -> Method {
        if let Some(Slot::Method(old)) = old {
            let mut history = old.history.clone();
            history.push(MethodVersion {
                source: old.source.clone(),
                origin: old.origin.clone(),
                installed_at: old.installed_at,
                provenance: old.provenance.clone(),
            });
            let excess = history.len().saturating_sub(MAX_HISTORY);
            history.drain(..excess);
            self.history = history;
        }
        self
    }

    /// The previous version, current again; `None` when there is no history.
    pub fn rolled_back(&self) -> Option<Method> {
        let mut history = self.history.clone();
        let prev = history.pop()?;
        Some(Method {
            source: prev.source,
            origin: prev.origin,
            installed_at: prev.installed_at,
            provenance: prev.provenance,
            history,
        })
    }
}

fn default_origin() -> String {
    "user".to_string()
}

/// What a slot holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// A JSON value (possibly containing `{"$ref": oid}` references).
    Value(Json),
    /// A JavaScript method.
    Method(Method),
}

impl Slot {
    /// The public view of a slot: the value itself, or `{"method": {...}}`.
    pub fn to_view(&self) -> Json {
        match self {
            Slot::Value(v) => v.clone(),
            Slot::Method(m) => json!({ "method": m }),
        }
    }
}

/// One object: its oid, slots and the version of its last committed change.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectState {
    pub oid: String,
    pub slots: BTreeMap<String, Slot>,
    /// Incremented by every committed change; the optimistic-concurrency check compares it.
    pub version: u64,
}

/// The persisted form of an object's slots (the `doc` field of its record).
#[derive(Serialize, Deserialize)]
struct Doc {
    slots: BTreeMap<String, Slot>,
}

impl ObjectState {
    /// A new, never-committed object with the given parents and slots.
    pub fn new(oid: impl Into<String>, parents: &[&str], slots: BTreeMap<String, Slot>) -> Self {
        let mut obj = ObjectState {
            oid: oid.into(),
            slots,
            version: 0,
        };
        if !parents.is_empty() {
            obj.set_parents(parents.iter().map(|p| p.to_string()).collect());
        }
        obj
    }

    /// The object's name slot, or its oid when it has none.
    pub fn name(&self) -> String {
        match self.slots.get(NAME_SLOT) {
            Some(Slot::Value(Json::String(s))) => s.clone(),
            _ => self.oid.clone(),
        }
    }

    /// The oids in `parent*`, in order. Non-reference entries are ignored.
    pub fn parents(&self) -> Vec<String> {
        match self.slots.get(PARENTS_SLOT) {
            Some(Slot::Value(v)) => refs_in_list(v),
            _ => Vec::new(),
        }
    }

    pub fn set_parents(&mut self, parents: Vec<String>) {
        let list = parents.into_iter().map(|p| json!({ "$ref": p })).collect();
        self.slots
            .insert(PARENTS_SLOT.to_string(), Slot::Value(Json::Array(list)));
    }

    /// Serialises the slots for the store.
    pub fn doc_json(&self) -> String {
        serde_json::to_string(&DocRef { slots: &self.slots }).expect("slots are always JSON")
    }

    /// Rebuilds an object from its stored record.
    pub fn from_doc(oid: String, doc: &str, version: u64) -> Result<Self, serde_json::Error> {
        let doc: Doc = serde_json::from_str(doc)?;
        Ok(ObjectState {
            oid,
            slots: doc.slots,
            version,
        })
    }

    /// The public view used by REST and the page.
    pub fn to_view(&self) -> Json {
        serde_json::to_value(self.view()).unwrap_or_default()
    }

    /// The object as REST and the page show it.
    pub fn view(&self) -> ObjectView {
        ObjectView {
            oid: self.oid.clone(),
            name: self.name(),
            parents: self.parents(),
            slots: self
                .slots
                .iter()
                .map(|(k, v)| (k.clone(), v.to_view()))
                .collect(),
            version: self.version,
        }
    }
}

/// An object as REST shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ObjectView {
    pub oid: String,
    pub name: String,
    /// The `parent*` slots' oids, in delegation order.
    pub parents: Vec<String>,
    /// Each slot's value; a method slot shows as `{"method": Method}`.
    #[schema(value_type = std::collections::BTreeMap<String, Object>)]
    pub slots: serde_json::Map<String, Json>,
    /// Incremented by every committed change.
    pub version: u64,
}

#[derive(Serialize)]
struct DocRef<'a> {
    slots: &'a BTreeMap<String, Slot>,
}

/// `{"$ref": "oid"}` → `Some("oid")`.
pub fn as_ref(v: &Json) -> Option<&str> {
    match v {
        Json::Object(m) if m.len() == 1 => m.get("$ref").and_then(Json::as_str),
        _ => None,
    }
}

/// The oids of a list of references (a single reference counts as a list of one).
pub fn refs_in_list(v: &Json) -> Vec<String> {
    match v {
        Json::Array(items) => items
            .iter()
            .filter_map(as_ref)
            .map(str::to_string)
            .collect(),
        other => as_ref(other)
            .map(|s| vec![s.to_string()])
            .unwrap_or_default(),
    }
}

/// Checks a slot name: non-empty, at most [`MAX_SLOT_NAME`] characters, no control characters.
pub fn validate_slot_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(TelosError::BadRequest("slot name is empty".into()));
    }
    if name.chars().count() > MAX_SLOT_NAME {
        return Err(TelosError::BadRequest(format!(
            "slot name is longer than {MAX_SLOT_NAME} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(TelosError::BadRequest(format!(
            "slot name {name:?} contains control characters"
        )));
    }
    Ok(())
}

/// Checks an oid as given by a client: same rules as slot names, plus no `/`.
pub fn validate_oid(oid: &str) -> Result<()> {
    validate_slot_name(oid).map_err(|e| TelosError::BadRequest(format!("bad oid: {e}")))?;
    if oid.contains('/') {
        return Err(TelosError::BadRequest(format!(
            "bad oid {oid:?}: contains '/'"
        )));
    }
    Ok(())
}

/// A fresh oid for a clone: short, random, and readable in logs.
pub fn new_oid() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("o{}", &id[..16])
}

/// Looks `name` up on `start`, then on its parents depth-first in order. Each object is visited
/// at most once, so cycles in `parent*` end the search instead of looping. `fetch` returns an
/// object by oid (or `None` when it is gone: a dangling parent is skipped). Answers the object
/// that holds the slot (the receiver or an ancestor).
pub fn lookup<F>(start: &str, name: &str, mut fetch: F) -> Result<Option<Arc<ObjectState>>>
where
    F: FnMut(&str) -> Result<Option<Arc<ObjectState>>>,
{
    // Most lookups end at the receiver: no bookkeeping for those.
    let Some(first) = fetch(start)? else {
        return Ok(None);
    };
    if first.slots.contains_key(name) {
        return Ok(Some(first));
    }
    let mut seen = HashSet::from([start.to_string()]);
    let mut stack: Vec<String> = first.parents().into_iter().rev().collect();
    while let Some(oid) = stack.pop() {
        if !seen.insert(oid.clone()) {
            continue;
        }
        let Some(obj) = fetch(&oid)? else { continue };
        if obj.slots.contains_key(name) {
            return Ok(Some(obj));
        }
        // Push in reverse so the first parent is searched first (depth-first, in order).
        for parent in obj.parents().into_iter().rev() {
            if !seen.contains(&parent) {
                stack.push(parent);
            }
        }
    }
    Ok(None)
}

/// The oids of `start` and its ancestors, depth-first in `parent*` order, each once (so cycles
/// end); dangling parents are left out.
pub fn ancestors<F>(start: &str, mut fetch: F) -> Result<Vec<String>>
where
    F: FnMut(&str) -> Result<Option<Arc<ObjectState>>>,
{
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut stack = vec![start.to_string()];
    while let Some(oid) = stack.pop() {
        if !seen.insert(oid.clone()) {
            continue;
        }
        let Some(obj) = fetch(&oid)? else { continue };
        out.push(oid);
        for parent in obj.parents().into_iter().rev() {
            if !seen.contains(&parent) {
                stack.push(parent);
            }
        }
    }
    Ok(out)
}

/// The primordial objects of a fresh world, ready to be committed in one transaction.
pub fn primordial_objects() -> Vec<ObjectState> {
    let named = |purpose: &str, name: &str| {
        let mut s = BTreeMap::new();
        s.insert(NAME_SLOT.to_string(), Slot::Value(json!(name)));
        s.insert("purpose".to_string(), Slot::Value(json!(purpose)));
        s
    };
    vec![
        ObjectState::new(
            "traits_obj",
            &[],
            named(
                "The ultimate ancestor: behaviour every object shares.",
                "traits_obj",
            ),
        ),
        ObjectState::new(
            "genesis_obj",
            &["traits_obj"],
            named("The first clonable being.", "genesis_obj"),
        ),
        ObjectState::new(
            "memory_manager",
            &["traits_obj"],
            named(
                "The world's long-term memory: search, count, reindex.",
                "memory_manager",
            ),
        ),
        ObjectState::new(
            "backup_manager",
            &["traits_obj"],
            named(
                "Keeps the world safe: schedules, runs and verifies backups.",
                "backup_manager",
            ),
        ),
        ObjectState::new(
            "Retrievable",
            &["traits_obj"],
            named(
                "Trait: objects that inherit it are indexed in memory.",
                "Retrievable",
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(objs: Vec<ObjectState>) -> HashMap<String, Arc<ObjectState>> {
        objs.into_iter()
            .map(|o| (o.oid.clone(), Arc::new(o)))
            .collect()
    }

    fn slots(pairs: &[(&str, Json)]) -> BTreeMap<String, Slot> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Slot::Value(v.clone())))
            .collect()
    }

    #[test]
    fn lookup_prefers_own_slots_then_parents_in_order() {
        let w = world(vec![
            ObjectState::new("a", &[], slots(&[("x", json!(1)), ("y", json!("a"))])),
            ObjectState::new("b", &[], slots(&[("y", json!("b")), ("z", json!("b"))])),
            ObjectState::new("c", &["a", "b"], slots(&[("x", json!(3))])),
        ]);
        let get = |name: &str| {
            lookup("c", name, |o| Ok(w.get(o).cloned()))
                .unwrap()
                .map(|h| (h.oid.clone(), h.slots[name].clone()))
        };
        assert_eq!(get("x").unwrap(), ("c".into(), Slot::Value(json!(3))));
        assert_eq!(get("y").unwrap(), ("a".into(), Slot::Value(json!("a"))));
        assert_eq!(get("z").unwrap(), ("b".into(), Slot::Value(json!("b"))));
        assert!(get("nothing").is_none());
    }

    #[test]
    fn lookup_survives_parent_cycles_and_dangling_parents() {
        let w = world(vec![
            ObjectState::new("a", &["b", "gone"], BTreeMap::new()),
            ObjectState::new("b", &["a"], slots(&[("k", json!(true))])),
        ]);
        let found = lookup("a", "k", |o| Ok(w.get(o).cloned())).unwrap();
        assert_eq!(found.unwrap().oid, "b");
        assert!(
            lookup("a", "missing", |o| Ok(w.get(o).cloned()))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn slot_names_are_validated() {
        assert!(validate_slot_name("area").is_ok());
        assert!(validate_slot_name("parent*").is_ok());
        assert!(validate_slot_name("").is_err());
        assert!(validate_slot_name("a\nb").is_err());
        assert!(validate_slot_name(&"x".repeat(129)).is_err());
        assert!(validate_slot_name(&"é".repeat(128)).is_ok());
    }

    #[test]
    fn doc_round_trips_exactly() {
        let mut s = slots(&[("n", json!({"deep": [1, 2.5, null, "x"]}))]);
        s.insert(
            "m".into(),
            Slot::Method(Method {
                installed_at: 7,
                ..Method::new("function m(self) { return 1; }", "user")
            }),
        );
        let obj = ObjectState::new("o1", &["genesis_obj"], s);
        let back = ObjectState::from_doc("o1".into(), &obj.doc_json(), 0).unwrap();
        assert_eq!(back, obj);
        assert_eq!(back.parents(), vec!["genesis_obj".to_string()]);
    }
}
