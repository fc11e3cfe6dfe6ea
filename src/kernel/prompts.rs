//! What the personas are asked. Each prompt is a system message (who the persona is) and one
//! user message (the task), built from plain data so tests can read them.

use serde_json::Value as Json;

use crate::llm::Message;

/// What the kernel knows about the receiver of a miss.
#[derive(Debug, Clone)]
pub struct ReceiverContext {
    pub oid: String,
    pub name: String,
    /// Oids of the parent chain, nearest first (without the receiver).
    pub ancestors: Vec<String>,
    /// Value slots (name, value as JSON text, shortened).
    pub values: Vec<(String, String)>,
    /// Methods the receiver understands (own and inherited).
    pub methods: Vec<String>,
    pub selector: String,
    pub args: Vec<Json>,
    /// The `kernel_approval` slot nearest along the chain, if any.
    pub approval: Option<super::approval::Approval>,
}

/// A method recalled from memory, offered as an example.
#[derive(Debug, Clone)]
pub struct Example {
    pub description: String,
    pub source: String,
}

/// A previous round's failure, fed back to BRICK.
#[derive(Debug, Clone)]
pub struct Feedback {
    pub code: String,
    pub stage: String,
    pub error: String,
    /// Which repair round this feedback opens (1, 2, ...): every round's prompt differs.
    pub round: usize,
}

fn type_of(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

impl ReceiverContext {
    /// `name.selector(3, 4)`.
    pub fn call_text(&self) -> String {
        let args: Vec<String> = self.args.iter().map(|a| a.to_string()).collect();
        format!("{}.{}({})", self.name, self.selector, args.join(", "))
    }

    /// The shape of the situation, without names: the selector, the argument types and the
    /// receiver's slot names (sorted). Two messages with the same situation can share a method.
    pub fn situation(&self) -> String {
        let types: Vec<&str> = self.args.iter().map(type_of).collect();
        let mut slots: Vec<&str> = self
            .values
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n != "name")
            .collect();
        slots.sort_unstable();
        format!(
            "{}({}) on an object with slots {}",
            self.selector,
            types.join(", "),
            slots.join(", ")
        )
    }

    /// The recall query: the receiver's name and the situation.
    pub fn recall_query(&self) -> String {
        format!("{}.{}", self.name, self.situation())
    }
}

/// The name the prompt gives the `i`-th argument: a, b, c, ...
fn param_name(i: usize) -> char {
    (b'a' + i.min(25) as u8) as char
}

fn prompts_short(v: &Json) -> String {
    short(&v.to_string(), 200)
}

/// Shortens a JSON text for a prompt.
pub fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut}…")
}

/// BRICK's fixed instructions. They come first in every BRICK prompt and never change, so a
/// local backend can keep them evaluated between calls (prompt-prefix reuse).
pub const BRICK_SYSTEM: &str = "You are BRICK, the builder of TelOS, a live world of prototype \
objects. You write one JavaScript method at a time. Answer with the code of exactly one \
function and nothing else.

How methods work:
- A method is function NAME(self, a, b) { ... }. self is the object that received the message; \
a, b, ... are the message's arguments.
- Read a slot by its own name: self.width. Write one: self.count = 5. Call another method of the \
object: self.describe().
- Plain JavaScript only: no require, import, fetch, timers, eval or globals.
- Return a JSON value (number, string, boolean, array, object or null).

Example 1. The object has the slots self.price = 10 and self.qty = 3.
Message: order.total()
function total(self) {
  return self.price * self.qty;
}

Example 2. The object has the slot self.items = [1, 2].
Message: list.add(5)
function add(self, a) {
  self.items = self.items.concat([a]);
  return self.items.length;
}";

/// Failed attempts of this selector in earlier runs, shown to BRICK as mistakes not to repeat.
#[derive(Debug, Clone)]
pub struct PastFailure {
    pub stage: String,
    pub reason: String,
}

/// What a rejection's reason follows in a recorded attempt (see `pipeline::approve`).
pub const REJECTED: &str = " rejected the method: ";

/// BRICK's task: write the method. The fixed instructions come first, then what this world
/// remembers, then the receiver, then the message, then (in a repair) what went wrong.
pub fn brick(
    ctx: &ReceiverContext,
    examples: &[Example],
    past: &[PastFailure],
    feedback: Option<&Feedback>,
) -> Vec<Message> {
    let mut u = String::new();
    if !examples.is_empty() {
        u.push_str("Methods written before in this world (examples):\n");
        for e in examples {
            u.push_str(&format!("// {}\n{}\n", e.description, e.source));
        }
        u.push('\n');
    }
    let parents = if ctx.ancestors.is_empty() {
        String::new()
    } else {
        format!(" (parents: {})", ctx.ancestors.join(" -> "))
    };
    u.push_str(&format!(
        "The object {}{parents} has these slots:\n",
        ctx.name
    ));
    for (name, value) in &ctx.values {
        u.push_str(&format!("- self.{name} = {value}\n"));
    }
    if !ctx.methods.is_empty() {
        u.push_str(&format!(
            "It already understands these methods: {}\n",
            ctx.methods.join(", ")
        ));
    }
    u.push_str(&format!("\nMessage: {}\n", ctx.call_text()));
    if ctx.args.is_empty() {
        u.push_str("There are no arguments: read what the method needs from the slots above.\n");
    } else {
        u.push_str("Arguments:\n");
        for (i, a) in ctx.args.iter().enumerate() {
            u.push_str(&format!(
                "- {} = {} ({})\n",
                param_name(i),
                prompts_short(a),
                type_of(a)
            ));
        }
    }
    u.push_str(&format!(
        "Write: function {}(self{}) {{ ... }}\n",
        ctx.selector,
        (0..ctx.args.len())
            .map(|i| format!(", {}", param_name(i)))
            .collect::<String>()
    ));
    // A person's rejection (the approve stage) is a requirement, not a mistake to avoid: it
    // comes first and is worded as one.
    // Only rejections with a reason ask something: a timeout or a bare rejection says nothing
    // about the code, and is left out.
    let (approvals, failed): (Vec<&PastFailure>, Vec<&PastFailure>) =
        past.iter().partition(|f| f.stage == "approve");
    let asked: Vec<&str> = approvals
        .iter()
        .filter_map(|f| f.reason.split_once(REJECTED).map(|(_, r)| r.trim()))
        .filter(|r| !r.is_empty())
        .collect();
    if !asked.is_empty() {
        u.push_str("\nThe person who approves methods in this world rejected earlier versions. Do what they ask:\n");
        for request in asked {
            u.push_str(&format!(
                "- {}\n",
                short(&request.replace(['\r', '\n'], " "), 300)
            ));
        }
    }
    if !failed.is_empty() {
        u.push_str("\nEarlier attempts at this message failed; do not repeat these mistakes:\n");
        for f in failed {
            u.push_str(&format!(
                "- at the {} stage: {}\n",
                f.stage,
                short(&f.reason, 300)
            ));
        }
    }
    if let Some(f) = feedback {
        u.push_str(&format!(
            "\nAttempt {} failed at the {} stage.\nThe code was:\n{}\nThe error: {}\n",
            f.round,
            f.stage,
            f.code,
            short(&f.error, 600)
        ));
        if let Some(line) = failing_line(&f.code, &ctx.selector, &f.error) {
            u.push_str(&format!("The failing line: {line}\n"));
        }
        for hint in hints(ctx, &f.code, &f.error) {
            u.push_str(&format!("Hint: {hint}\n"));
        }
        u.push_str("Write a corrected, different method.\n");
    }
    vec![Message::system(BRICK_SYSTEM), Message::user(u)]
}

/// The line of `code` a sandbox error points at (`receiver.selector:LINE:COL`), if any.
pub fn failing_line(code: &str, selector: &str, error: &str) -> Option<String> {
    let re = regex::Regex::new(&format!(r"\.{}:(\d+):\d+", regex::escape(selector))).ok()?;
    let line: usize = re.captures(error)?.get(1)?.as_str().parse().ok()?;
    let text = code.lines().nth(line.checked_sub(1)?)?.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// What a small model should try differently, read from the error and the code.
pub fn hints(ctx: &ReceiverContext, code: &str, error: &str) -> Vec<String> {
    let mut out = Vec::new();
    let slots: Vec<String> = ctx
        .values
        .iter()
        .map(|(n, _)| format!("self.{n}"))
        .collect();
    let lower = error.to_lowercase();
    if code.contains("self.slot") && !ctx.values.iter().any(|(n, _)| n == "slot") {
        out.push(format!(
            "self.slot is not a slot of this object; read the slots by their names: {}",
            slots.join(", ")
        ));
    }
    if lower.contains("of undefined") || lower.contains("undefined is not") {
        out.push(format!(
            "something you read is undefined; the slots that exist are exactly: {}",
            slots.join(", ")
        ));
    }
    if let Some(c) = regex::Regex::new(r"'?([A-Za-z_$][\w$]*)'? is not defined")
        .ok()
        .and_then(|re| re.captures(error))
    {
        let name = &c[1];
        if ctx.values.iter().any(|(n, _)| n == name) {
            out.push(format!("{name} is a slot: write self.{name}"));
        } else {
            out.push(format!(
                "{name} does not exist: declare it with const, or use a slot"
            ));
        }
    }
    if lower.contains("not a function") {
        out.push(format!(
            "only these methods exist: {}; compute the rest yourself",
            if ctx.methods.is_empty() {
                "none".to_string()
            } else {
                ctx.methods.join(", ")
            }
        ));
    }
    if lower.contains("same code") {
        out.push("write the method another way than before".into());
    }
    out
}

/// ALFRED's fixed instructions (first in every ALFRED prompt).
pub const ALFRED_SYSTEM: &str = "You are ALFRED, the careful reviewer of TelOS. You look for \
concrete problems in a new method that already ran once without error. Answer VALID unless you \
find one: it reaches outside its object (I/O, globals, eval, timers), it changes other objects, \
or it clearly computes something else than its name asks. Short, simple code is fine, and any \
answer value (also false, 0 or an empty list) can be right. Answer with one line: VALID: why, \
or INVALID: the concrete problem.";

/// The fixed part of each persona's prompts, for warming a local model up at start.
pub fn fixed_instructions() -> [(&'static str, &'static str); 2] {
    [("BRICK", BRICK_SYSTEM), ("ALFRED", ALFRED_SYSTEM)]
}

/// ALFRED's task: a short verdict on a method that already passed the static checks and its
/// trial, knowing what the trial returned.
pub fn alfred(ctx: &ReceiverContext, source: &str, trial: &Json) -> Vec<Message> {
    // Everything fixed is in the system message (kept evaluated between calls by a local
    // backend); the task itself is short, since every token of it is evaluated each time.
    let system = ALFRED_SYSTEM;
    // The trial's value is not shown: a small reviewer reads `false` or `0` as a failure of
    // the method. A method that threw never gets here (the trial runs first).
    let _ = trial;
    let user = format!(
        "Message: {}\n{}\nIt ran once on a copy of the object without error.",
        ctx.call_text(),
        source,
    );
    vec![Message::system(system), Message::user(user)]
}

/// BABS's task: one line describing the method, for memory.
pub fn babs(ctx: &ReceiverContext, source: &str) -> Vec<Message> {
    let system = "You are BABS, the librarian of TelOS. You describe methods in one plain \
sentence so they can be found again.";
    let user = format!(
        "Describe in one sentence what the method `{}` of {} does:\n\n{}",
        ctx.selector, ctx.name, source
    );
    vec![Message::system(system), Message::user(user)]
}

/// BABS's answer as one line.
pub fn one_line(answer: &str) -> String {
    let line = crate::llm::strip_fences(answer)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string();
    short(&line, 300)
}

/// ROBIN's task: answer a person's free text, in character, about an object.
pub fn robin(text: &str, about: Option<&Json>) -> Vec<Message> {
    let system = "You are ROBIN, the friendly guide of TelOS, a live world of prototype objects \
that learn new methods when they receive messages they do not understand. Answer briefly and \
warmly. To talk to an object, people type target.selector(json args), e.g. \
genesis_obj.clone().";
    let mut user = String::new();
    if let Some(obj) = about {
        user.push_str(&format!(
            "The person is looking at this object:\n{}\n\n",
            short(&obj.to_string(), 2000)
        ));
    }
    user.push_str(text);
    vec![Message::system(system), Message::user(user)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> ReceiverContext {
        ReceiverContext {
            oid: "o1".into(),
            name: "rectangle".into(),
            ancestors: vec!["proto".into(), "genesis_obj".into()],
            values: vec![("width".into(), "3".into()), ("height".into(), "4".into())],
            methods: vec!["describe".into()],
            selector: "area".into(),
            args: vec![json!(2)],
            approval: None,
        }
    }

    #[test]
    fn a_persons_rejection_reaches_brick_as_a_request() {
        let past = [
            PastFailure {
                stage: "approve".into(),
                reason: "ada rejected the method: name the result".into(),
            },
            PastFailure {
                stage: "trial".into(),
                reason: "returned NaN".into(),
            },
            PastFailure {
                stage: "approve".into(),
                reason: "nobody approved the method within 600 s, so it was rejected".into(),
            },
        ];
        let u = &brick(&ctx(), &[], &past, None)[1].content;
        assert!(!u.contains("nobody approved"), "{u}");
        let asked = u.find("Do what they ask:\n- name the result\n").expect(u);
        let failed = u.find("- at the trial stage: returned NaN").expect(u);
        assert!(asked < failed, "{u}");
        assert!(!u.contains("at the approve stage"), "{u}");
    }

    #[test]
    fn brick_gets_the_context_examples_and_the_last_error() {
        let examples = [Example {
            description: "perimeter(): adds the sides".into(),
            source: "function perimeter(self) { return 2 * (self.width + self.height); }".into(),
        }];
        let fb = Feedback {
            code: "function area(self, a) {\n  return x;\n}".into(),
            stage: "trial".into(),
            error: "o1.area: x is not defined\n    at area (o1.area:2:10)".into(),
            round: 1,
        };
        let past = [PastFailure {
            stage: "trial".into(),
            reason: "returned NaN".into(),
        }];
        let m = brick(&ctx(), &examples, &past, Some(&fb));
        let u = &m[1].content;
        for needle in [
            "rectangle.area(2)",
            "- self.width = 3",
            "proto -> genesis_obj",
            "function area(self, a)",
            "function perimeter(self)",
            "x is not defined",
            "The failing line: return x;",
            "returned NaN",
            "Attempt 1",
        ] {
            assert!(u.contains(needle), "{needle} missing from:\n{u}");
        }
        assert!(!m[0].content.contains("self.slot"), "{}", m[0].content);
        assert_eq!(
            ctx().recall_query(),
            "rectangle.area(number) on an object with slots height, width"
        );
        assert_eq!(
            one_line("\n  Computes the area.\nMore."),
            "Computes the area."
        );
    }

    #[test]
    fn the_instructions_come_first_and_stay_the_same() {
        let a = brick(&ctx(), &[], &[], None);
        let mut other = ctx();
        other.selector = "volume".into();
        let b = brick(&other, &[], &[], None);
        assert_eq!(a[0], b[0]);
        assert!(a[0].content.contains("self.price * self.qty"));
    }

    #[test]
    fn every_repair_round_asks_differently() {
        let fb = |round| Feedback {
            code: "function area(self) { return self.slot.width; }".into(),
            stage: "trial".into(),
            error: "o1.area: cannot read property 'width' of undefined".into(),
            round,
        };
        let one = brick(&ctx(), &[], &[], Some(&fb(1)));
        let two = brick(&ctx(), &[], &[], Some(&fb(2)));
        assert_ne!(one, two);
        let u = &one[1].content;
        assert!(u.contains("self.slot is not a slot"), "{u}");
        assert!(u.contains("self.width, self.height"), "{u}");
    }

    #[test]
    fn the_same_shape_is_the_same_situation_whatever_the_names() {
        let mut other = ctx();
        other.name = "crate".into();
        other.values.reverse();
        other.values.push(("name".into(), "\"crate\"".into()));
        assert_eq!(ctx().situation(), other.situation());
        other.args = vec![json!("2")];
        assert_ne!(ctx().situation(), other.situation());
    }
}
