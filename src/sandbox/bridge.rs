//! Values across the bridge: primitives as values, anything else as JSON text; throwing typed
//! errors into JavaScript; the checks every host function makes first.

use rquickjs::Ctx;
use serde_json::Value as Json;

use crate::error::TelosError;

use super::state::{DECODE, with_exec};

/// A slot value as JavaScript sees it: primitives directly, anything else through JSON text
/// (and the prelude's `decode` when it holds references).
pub(super) fn to_js<'js>(ctx: &Ctx<'js>, v: &Json) -> rquickjs::Result<rquickjs::Value<'js>> {
    use rquickjs::Value;
    Ok(match v {
        Json::Null => Value::new_null(ctx.clone()),
        Json::Bool(b) => Value::new_bool(ctx.clone(), *b),
        Json::Number(n) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
            Some(i) => Value::new_int(ctx.clone(), i),
            None => Value::new_float(ctx.clone(), n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => rquickjs::String::from_str(ctx.clone(), s)?.into_value(),
        other => {
            let text = other.to_string();
            if text.contains("\"$ref\"") {
                let decode = DECODE
                    .with(|d| d.borrow().clone())
                    .expect("engine initialised")
                    .restore(ctx)?;
                decode.call((text,))?
            } else {
                ctx.json_parse(text)?
            }
        }
    })
}

/// A primitive JavaScript value (the prelude sends nothing else here) as JSON.
pub(super) fn primitive_json(ctx: &Ctx<'_>, v: &rquickjs::Value<'_>) -> rquickjs::Result<Json> {
    if let Some(b) = v.as_bool() {
        return Ok(Json::Bool(b));
    }
    if let Some(i) = v.as_int() {
        return Ok(Json::from(i));
    }
    if let Some(f) = v.as_float() {
        // As JSON text would carry it: integral values as integers (and -0 as 0).
        if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
            return Ok(Json::from(f as i64));
        }
        return Ok(serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number));
    }
    if let Some(s) = v.as_string() {
        return Ok(Json::String(s.to_string()?));
    }
    if v.is_null() || v.is_undefined() {
        return Ok(Json::Null);
    }
    Err(throw(
        ctx,
        TelosError::MethodError("value is not JSON-compatible".into()),
    ))
}

/// Throws `err` into JavaScript, remembering the typed error for the host.
pub(super) fn throw(ctx: &Ctx<'_>, err: TelosError) -> rquickjs::Error {
    let message = err.to_string();
    with_exec(|e| {
        // A budget, once exceeded, fails the whole message even if a method catches it.
        if matches!(err, TelosError::LimitExceeded(_)) {
            e.fatal.get_or_insert(err.clone());
        }
        e.pending = Some(err)
    });
    rquickjs::Exception::throw_message(ctx, &message)
}

pub(super) fn check_fatal(ctx: &Ctx<'_>) -> rquickjs::Result<()> {
    let (fatal, compiling) = with_exec(|e| (e.fatal.clone(), e.compiling));
    if compiling {
        return Err(throw(
            ctx,
            TelosError::MethodError(
                "a method's source must be one function: nothing may run while it is compiled"
                    .into(),
            ),
        ));
    }
    match fatal {
        Some(f) => Err(throw(ctx, f)),
        None => Ok(()),
    }
}

pub(super) fn parse_json(ctx: &Ctx<'_>, text: &str) -> rquickjs::Result<Json> {
    serde_json::from_str(text).map_err(|e| {
        throw(
            ctx,
            TelosError::MethodError(format!("value is not JSON-compatible: {e}")),
        )
    })
}

/// `self.name = v` is for a method of `oid` only: other objects are changed by sending them a
/// setter.
pub(super) fn check_assigner(ctx: &Ctx<'_>, oid: &str, name: &str) -> rquickjs::Result<()> {
    if with_exec(|e| e.stack.last().is_some_and(|(r, _)| &**r == oid)) {
        return Ok(());
    }
    let receiver = with_exec(|e| e.stack.last().map(|(r, _)| r.to_string()));
    Err(throw(
        ctx,
        TelosError::MethodError(format!(
            "cannot assign {oid}.{name} from a method of {}: send {oid} a setter message ({name}_) instead",
            receiver.unwrap_or_default()
        )),
    ))
}
