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

    /// The recall query: the selector with its context (receiver name, slot names, arg types).
    pub fn recall_query(&self) -> String {
        let types: Vec<&str> = self.args.iter().map(type_of).collect();
        let slots: Vec<&str> = self.values.iter().map(|(n, _)| n.as_str()).collect();
        format!(
            "{}.{}({}) on an object with slots {}",
            self.name,
            self.selector,
            types.join(", "),
            slots.join(", ")
        )
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

/// BRICK's task: write the method.
pub fn brick(
    ctx: &ReceiverContext,
    examples: &[Example],
    feedback: Option<&Feedback>,
) -> Vec<Message> {
    let system = "You are BRICK, the builder of TelOS, a live world of prototype objects. \
You write one JavaScript method at a time. Answer with the code of exactly one function and \
nothing else.";
    let mut u = String::new();
    u.push_str(&format!(
        "Write the method `{}` so that this message works: {}\n\n",
        ctx.selector,
        ctx.call_text()
    ));
    u.push_str(&format!("Selector: {}\n", ctx.selector));
    // No oid here: the same message to a like object gets the same prompt (and, decoded
    // greedily, the same method).
    u.push_str(&format!("Object: {}\n", ctx.name));
    if !ctx.ancestors.is_empty() {
        u.push_str(&format!("Parents: {}\n", ctx.ancestors.join(" -> ")));
    }
    u.push_str("Slots:\n");
    for (name, value) in &ctx.values {
        u.push_str(&format!("- {name}: {value}\n"));
    }
    if !ctx.methods.is_empty() {
        u.push_str(&format!(
            "Methods it already understands: {}\n",
            ctx.methods.join(", ")
        ));
    }
    if ctx.args.is_empty() {
        u.push_str(
            "Arguments: none. The function takes only self: read what it needs from self's slots.\n\n",
        );
    } else {
        u.push_str("Arguments (plain JSON values, passed after self):\n");
        for (i, a) in ctx.args.iter().enumerate() {
            u.push_str(&format!(
                "- {} = {} ({})\n",
                param_name(i),
                prompts_short(a),
                type_of(a)
            ));
        }
        u.push('\n');
    }
    u.push_str(&format!(
        "Rules:\n\
- Write exactly one function: function {}(self{}) {{ ... }}\n\
- Read slots with self.slot, write them with self.slot = value; call methods with self.other(...) or send(oid, \"selector\", ...args).\n\
- A slot that does not exist reads as undefined: do not assume it exists.\n\
- Plain JavaScript only: no require, import, fetch, timers, eval or globals.\n\
- Return a JSON value (number, string, boolean, array, object or null).\n",
        ctx.selector,
        (0..ctx.args.len())
            .map(|i| format!(", {}", param_name(i)))
            .collect::<String>()
    ));
    if !examples.is_empty() {
        u.push_str("\nExamples of methods written before in this world:\n");
        for e in examples {
            u.push_str(&format!("// {}\n{}\n", e.description, e.source));
        }
    }
    if let Some(f) = feedback {
        u.push_str(&format!(
            "\nYour previous attempt failed at the {} stage with this error:\n{}\nThe code was:\n{}\nFix it.\n",
            f.stage, f.error, f.code
        ));
    }
    vec![Message::system(system), Message::user(u)]
}

/// ALFRED's task: review the method.
pub fn alfred(ctx: &ReceiverContext, source: &str) -> Vec<Message> {
    let system = "You are ALFRED, the careful reviewer of TelOS. You check new methods for safety \
and fitness. Answer VALID or INVALID on the first line, then one short reason.";
    let user = format!(
        "Object {} will get this method for the message {}:\n\n{}\n\nIs it safe (no I/O, no \
escape from the sandbox, only changes its own object) and does it do what the selector `{}` \
asks? Answer VALID or INVALID, then one short reason.",
        ctx.name,
        ctx.call_text(),
        source,
        ctx.selector
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
        }
    }

    #[test]
    fn brick_gets_the_context_examples_and_the_last_error() {
        let examples = [Example {
            description: "rectangle.perimeter: adds the sides".into(),
            source: "function perimeter(self) { return 2 * (self.width + self.height); }".into(),
        }];
        let fb = Feedback {
            code: "function area(self, a) { return x; }".into(),
            stage: "trial".into(),
            error: "ReferenceError: x is not defined".into(),
        };
        let m = brick(&ctx(), &examples, Some(&fb));
        let u = &m[1].content;
        for needle in [
            "Selector: area",
            "rectangle.area(2)",
            "- width: 3",
            "proto -> genesis_obj",
            "function area(self, a)",
            "function perimeter(self)",
            "ReferenceError: x is not defined",
        ] {
            assert!(u.contains(needle), "{needle} missing from:\n{u}");
        }
        assert_eq!(
            ctx().recall_query(),
            "rectangle.area(number) on an object with slots width, height"
        );
        assert_eq!(
            one_line("\n  Computes the area.\nMore."),
            "Computes the area."
        );
    }
}
