//! What the kernel reads of the world about a receiver: its slots and methods along the
//! delegation chain, and whether two objects are related. Pure functions over a fetch function,
//! so they are tested on a map of objects.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::error::{Result, TelosError};
use crate::kernel::approval::{APPROVAL_SLOT, Approval};
use crate::kernel::prompts::{self, ReceiverContext};
use crate::object::{ObjectState, PARENTS_SLOT, PRIMORDIAL, Slot, ancestors};
use crate::sandbox::Miss;

/// What the kernel knows of the receiver of `miss`: every slot `self.x` can read (its own, then
/// inherited ones, the nearest definition winning, but not the primordial objects'
/// descriptions) and every method it understands.
pub fn receiver_context<F>(miss: &Miss, mut fetch: F) -> Result<ReceiverContext>
where
    F: FnMut(&str) -> Result<Option<Arc<ObjectState>>>,
{
    let obj = fetch(&miss.receiver)?.ok_or_else(|| TelosError::NoObject(miss.receiver.clone()))?;
    let chain = ancestors(&miss.receiver, &mut fetch)?;
    let mut values: Vec<(String, String)> = Vec::new();
    let mut methods = BTreeSet::new();
    let mut approval = None;
    for oid in &chain {
        let Some(o) = fetch(oid)? else { continue };
        let primordial = PRIMORDIAL.contains(&oid.as_str());
        for (name, slot) in &o.slots {
            if name == APPROVAL_SLOT {
                // The nearest one counts; anything but "never" asks (fail closed).
                if let (None, Slot::Value(v)) = (approval, slot) {
                    approval = Some(match v.as_str() {
                        Some("never") => Approval::Never,
                        _ => Approval::Ask,
                    });
                }
                continue;
            }
            match slot {
                Slot::Method(_) => {
                    methods.insert(name.clone());
                }
                Slot::Value(v)
                    if !primordial
                        && name != PARENTS_SLOT
                        && !values.iter().any(|(n, _)| n == name) =>
                {
                    values.push((name.clone(), prompts::short(&v.to_string(), 200)));
                }
                Slot::Value(_) => {}
            }
        }
    }
    Ok(ReceiverContext {
        oid: miss.receiver.clone(),
        name: obj.name(),
        ancestors: chain.into_iter().skip(1).collect(),
        values,
        methods: methods.into_iter().collect(),
        selector: miss.selector.clone(),
        args: miss.args.clone(),
        approval,
    })
}

/// Whether `a` and `b` share an ancestor that is not primordial (a prototype of their own):
/// what one learned, the other may reuse.
pub fn related<F>(a: &str, b: &str, mut fetch: F) -> bool
where
    F: FnMut(&str) -> Result<Option<Arc<ObjectState>>>,
{
    let ca = ancestors(a, &mut fetch).unwrap_or_default();
    let cb = ancestors(b, &mut fetch).unwrap_or_default();
    ca.iter()
        .any(|x| !PRIMORDIAL.contains(&x.as_str()) && cb.contains(x))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::object::Method;

    fn obj(oid: &str, parents: &[&str], slots: &[(&str, Slot)]) -> (String, Arc<ObjectState>) {
        let slots = slots
            .iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect();
        (
            oid.to_string(),
            Arc::new(ObjectState::new(oid, parents, slots)),
        )
    }

    fn world() -> HashMap<String, Arc<ObjectState>> {
        let v = |j| Slot::Value(j);
        HashMap::from([
            obj("genesis_obj", &[], &[("purpose", v(json!("the root")))]),
            obj(
                "shape",
                &["genesis_obj"],
                &[
                    ("name", v(json!("shape"))),
                    ("units", v(json!("cm"))),
                    ("width", v(json!(1))),
                    (
                        "describe",
                        Slot::Method(Method::new("function describe(self) {}", "test")),
                    ),
                ],
            ),
            obj(
                "box",
                &["shape"],
                &[
                    ("name", v(json!("box"))),
                    ("width", v(json!(3))),
                    ("height", v(json!(4))),
                ],
            ),
            obj("other", &["genesis_obj"], &[("name", v(json!("other")))]),
            obj("box2", &["shape"], &[("name", v(json!("box2")))]),
        ])
    }

    fn miss(receiver: &str) -> Miss {
        Miss {
            receiver: receiver.into(),
            selector: "area".into(),
            args: vec![json!(2)],
        }
    }

    #[test]
    fn the_context_holds_own_and_inherited_slots_nearest_first_without_primordial_ones() {
        let w = world();
        let ctx = receiver_context(&miss("box"), |o| Ok(w.get(o).cloned())).unwrap();
        assert_eq!(ctx.name, "box");
        assert_eq!(ctx.ancestors, vec!["shape", "genesis_obj"]);
        let values: HashMap<&str, &str> = ctx
            .values
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        // The receiver's width wins over the parent's; the parent's units are inherited; the
        // primordial purpose and the parent list are not slots a method reads.
        assert_eq!(values["width"], "3");
        assert_eq!(values["units"], "\"cm\"");
        assert!(!values.contains_key("purpose") && !values.contains_key(PARENTS_SLOT));
        assert_eq!(ctx.methods, vec!["describe"]);
        assert_eq!(
            (ctx.selector.as_str(), ctx.args.clone()),
            ("area", vec![json!(2)])
        );
    }

    #[test]
    fn a_missing_receiver_is_not_found() {
        let w = world();
        let e = receiver_context(&miss("nobody"), |o| Ok(w.get(o).cloned())).unwrap_err();
        assert!(matches!(e, TelosError::NoObject(_)), "{e}");
    }

    #[test]
    fn objects_are_related_through_a_prototype_of_their_own_only() {
        let w = world();
        let fetch = |o: &str| Ok(w.get(o).cloned());
        assert!(related("box", "box2", fetch));
        assert!(related("box", "shape", fetch));
        // Sharing only genesis_obj is no relation.
        assert!(!related("box", "other", fetch));
    }
}
