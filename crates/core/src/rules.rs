//! Per-collection access rules, PocketBase-style: `list`, `view`, `create`, `update` and
//! `delete` expressions in the filter language, with `@auth.*` (the caller: `id`,
//! `role`, `claims.…`) and `@request.body.*` (what the caller sends) beside the record's
//! own fields:
//!
//! ```text
//! view   = "published = true || author = @auth.id"
//! create = "@auth.id != null && @request.body.author = @auth.id"
//! ```
//!
//! A collection without `rules` is open to every caller the policy lets in. Once it has
//! `rules`, a missing, `null` or empty rule is for admins only; `"true"` is everyone.
//! Admins are never bound by rules.
//!
//! A rule is bound to one caller before use ([`Rule::bind`]): `@auth` and `@request`
//! become values, comparisons between values fold to `true`/`false`, and what is left is
//! an ordinary [`Filter`] over the record — so a list's rule is one more `&&` in the same
//! SQL the list runs (counts and cursors included), and a subscription's is evaluated in
//! memory with the same semantics.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::Identity;
use crate::query::{Filter, FilterError, Literal, Op, Parser, compare};
use crate::record::Record;

/// The rules of a collection, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Which records a list returns (and counts).
    #[serde(default)]
    pub list: Option<String>,
    /// Which records can be read one at a time, and whose changes reach subscribers.
    #[serde(default)]
    pub view: Option<String>,
    /// Who may create which records (the record is the new one).
    #[serde(default)]
    pub create: Option<String>,
    /// Who may change which records (the record is the current one).
    #[serde(default)]
    pub update: Option<String>,
    /// Who may delete which records.
    #[serde(default)]
    pub delete: Option<String>,
}

/// Which rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    /// `list`.
    List,
    /// `view`.
    View,
    /// `create`.
    Create,
    /// `update`.
    Update,
    /// `delete`.
    Delete,
}

impl RuleKind {
    /// Its name in the spec.
    pub fn name(self) -> &'static str {
        match self {
            Self::List => "list",
            Self::View => "view",
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

impl RuleSpec {
    /// The text of one rule, `None` when it is for admins only.
    pub fn get(&self, kind: RuleKind) -> Option<&str> {
        let r = match kind {
            RuleKind::List => &self.list,
            RuleKind::View => &self.view,
            RuleKind::Create => &self.create,
            RuleKind::Update => &self.update,
            RuleKind::Delete => &self.delete,
        };
        r.as_deref().filter(|s| !s.trim().is_empty())
    }

    /// Parses every rule, naming the first that is wrong.
    pub fn check(&self) -> Result<(), (RuleKind, FilterError)> {
        for kind in [
            RuleKind::List,
            RuleKind::View,
            RuleKind::Create,
            RuleKind::Update,
            RuleKind::Delete,
        ] {
            if let Some(text) = self.get(kind) {
                Rule::parse(text).map_err(|e| (kind, e))?;
            }
        }
        Ok(())
    }
}

/// One side of a comparison.
#[derive(Clone, Debug, PartialEq)]
enum Operand {
    /// A field of the record.
    Field(Vec<String>),
    /// `@auth.…`.
    Auth(Vec<String>),
    /// `@request.body.…`.
    Body(Vec<String>),
    /// A literal.
    Lit(Literal),
}

/// A parsed rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule(Node);

#[derive(Clone, Debug, PartialEq)]
enum Node {
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Const(bool),
    Cmp {
        left: Operand,
        op: Op,
        right: Operand,
    },
}

/// A rule bound to one caller.
#[derive(Clone, Debug, PartialEq)]
pub enum Bound {
    /// Every record.
    All,
    /// No record.
    Nothing,
    /// The records this filter matches.
    Filter(Filter),
}

impl Bound {
    /// Whether the record is admitted.
    pub fn admits(&self, r: &Record) -> bool {
        match self {
            Bound::All => true,
            Bound::Nothing => false,
            Bound::Filter(f) => f.matches(r),
        }
    }

    /// `filter && self`, for a list; `None` inside `Some` means no filter at all.
    pub fn narrow(&self, filter: Option<Filter>) -> Option<Option<Filter>> {
        match (self, filter) {
            (Bound::Nothing, _) => None,
            (Bound::All, f) => Some(f),
            (Bound::Filter(r), None) => Some(Some(r.clone())),
            (Bound::Filter(r), Some(f)) => {
                Some(Some(Filter::And(Box::new(f), Box::new(r.clone()))))
            }
        }
    }
}

/// What `@auth` and `@request.body` stand for.
#[derive(Clone, Copy, Debug, Default)]
pub struct RuleEnv<'a> {
    /// The caller (`None`: anonymous).
    pub auth: Option<&'a Identity>,
    /// The request body, for create and update.
    pub body: Option<&'a Value>,
}

fn flip(op: Op) -> Option<Op> {
    Some(match op {
        Op::Eq => Op::Eq,
        Op::Ne => Op::Ne,
        Op::Gt => Op::Lt,
        Op::Lt => Op::Gt,
        Op::Ge => Op::Le,
        Op::Le => Op::Ge,
        // "x" ~ field would ask whether the literal contains the field: not offered.
        Op::Like | Op::NotLike => return None,
    })
}

fn literal(v: Option<&Value>) -> Option<Literal> {
    Some(match v {
        None | Some(Value::Null) => Literal::Null,
        Some(Value::String(s)) => Literal::Str(s.clone()),
        Some(Value::Bool(b)) => Literal::Bool(*b),
        Some(Value::Number(n)) => Literal::Num(n.as_f64()?),
        Some(_) => return None,
    })
}

fn lit_value(l: &Literal) -> Value {
    match l {
        Literal::Str(s) => Value::String(s.clone()),
        Literal::Num(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Literal::Bool(b) => Value::Bool(*b),
        Literal::Null => Value::Null,
    }
}

fn lookup<'v>(mut v: &'v Value, path: &[String]) -> Option<&'v Value> {
    for seg in path {
        v = v.get(seg)?;
    }
    Some(v)
}

impl Operand {
    /// Its value, for anything but a record field.
    fn value(&self, env: &RuleEnv<'_>) -> Option<Value> {
        match self {
            Operand::Field(_) => None,
            Operand::Lit(l) => Some(lit_value(l)),
            Operand::Body(p) => Some(
                env.body
                    .and_then(|b| lookup(b, p))
                    .cloned()
                    .unwrap_or(Value::Null),
            ),
            Operand::Auth(p) => {
                let Some(who) = env.auth else {
                    return Some(Value::Null);
                };
                Some(match p.first().map(String::as_str) {
                    Some("id") if p.len() == 1 => Value::String(who.id.clone()),
                    Some("role") if p.len() == 1 => {
                        serde_json::to_value(who.role).unwrap_or(Value::Null)
                    }
                    Some("claims") => {
                        let claims = Value::Object(who.claims.clone());
                        lookup(&claims, &p[1..]).cloned().unwrap_or(Value::Null)
                    }
                    _ => Value::Null,
                })
            }
        }
    }
}

impl Node {
    fn bind(&self, env: &RuleEnv<'_>) -> Bound {
        match self {
            Node::Const(true) => Bound::All,
            Node::Const(false) => Bound::Nothing,
            Node::And(a, b) => match (a.bind(env), b.bind(env)) {
                (Bound::Nothing, _) | (_, Bound::Nothing) => Bound::Nothing,
                (Bound::All, x) | (x, Bound::All) => x,
                (Bound::Filter(x), Bound::Filter(y)) => {
                    Bound::Filter(Filter::And(Box::new(x), Box::new(y)))
                }
            },
            Node::Or(a, b) => match (a.bind(env), b.bind(env)) {
                (Bound::All, _) | (_, Bound::All) => Bound::All,
                (Bound::Nothing, x) | (x, Bound::Nothing) => x,
                (Bound::Filter(x), Bound::Filter(y)) => {
                    Bound::Filter(Filter::Or(Box::new(x), Box::new(y)))
                }
            },
            Node::Cmp { left, op, right } => {
                let (path, op, other) = match (left, right) {
                    (Operand::Field(p), other) => (Some(p), *op, other),
                    (other, Operand::Field(p)) => match flip(*op) {
                        Some(f) => (Some(p), f, other),
                        None => return Bound::Nothing,
                    },
                    _ => (None, *op, right),
                };
                let v = other.value(env);
                match path {
                    Some(path) => match literal(v.as_ref()) {
                        Some(value) => Bound::Filter(Filter::Cmp {
                            path: path.clone(),
                            op,
                            value,
                        }),
                        // An object or list never equals a field's value.
                        None if matches!(op, Op::Ne | Op::NotLike) => Bound::All,
                        None => Bound::Nothing,
                    },
                    None => {
                        let l = left.value(env);
                        let holds = match literal(v.as_ref()) {
                            Some(r) => compare(l.as_ref(), op, &r),
                            None => matches!(op, Op::Ne | Op::NotLike),
                        };
                        if holds { Bound::All } else { Bound::Nothing }
                    }
                }
            }
        }
    }
}

impl Rule {
    /// Parses rule text.
    pub fn parse(src: &str) -> Result<Rule, FilterError> {
        let mut p = Parser::new(src)?;
        let n = or(&mut p, 0)?;
        p.ws();
        if !p.at_end() {
            return Err(p.err("expected && or || or end of rule"));
        }
        Ok(Rule(n))
    }

    /// The rule for one caller.
    pub fn bind(&self, env: &RuleEnv<'_>) -> Bound {
        self.0.bind(env)
    }
}

fn or(p: &mut Parser<'_>, depth: usize) -> Result<Node, FilterError> {
    let mut left = and(p, depth)?;
    while p.eat("||") {
        let right = and(p, depth)?;
        left = Node::Or(Box::new(left), Box::new(right));
    }
    Ok(left)
}

fn and(p: &mut Parser<'_>, depth: usize) -> Result<Node, FilterError> {
    let mut left = atom(p, depth)?;
    while p.eat("&&") {
        let right = atom(p, depth)?;
        left = Node::And(Box::new(left), Box::new(right));
    }
    Ok(left)
}

fn atom(p: &mut Parser<'_>, depth: usize) -> Result<Node, FilterError> {
    if depth > crate::query::MAX_DEPTH {
        return Err(p.err("parentheses nested too deeply"));
    }
    if p.eat("(") {
        let n = or(p, depth + 1)?;
        if !p.eat(")") {
            return Err(p.err("expected ')'"));
        }
        return Ok(n);
    }
    let left = operand(p)?;
    p.ws();
    if let Operand::Lit(Literal::Bool(b)) = left
        && (p.at_end() || p.peek_any(&[")", "&&", "||"]))
    {
        return Ok(Node::Const(b));
    }
    let at = p.pos();
    let op = p.op()?;
    let right = operand(p)?;
    match (&left, &right) {
        (Operand::Field(_), Operand::Field(_)) => Err(FilterError {
            position: at,
            message: "compare a field with a value, @auth or @request, not with another field"
                .into(),
        }),
        (l, Operand::Field(_)) if !matches!(l, Operand::Field(_)) && flip(op).is_none() => {
            Err(FilterError {
                position: at,
                message: "put the field on the left of ~ and !~".into(),
            })
        }
        _ => Ok(Node::Cmp { left, op, right }),
    }
}

fn operand(p: &mut Parser<'_>) -> Result<Operand, FilterError> {
    p.ws();
    if p.eat("@") {
        let start = p.pos();
        let path = p.path()?;
        return match path.first().map(String::as_str) {
            Some("auth")
                if path.len() >= 2
                    && matches!(path[1].as_str(), "id" | "role")
                    && path.len() == 2 =>
            {
                Ok(Operand::Auth(path[1..].to_vec()))
            }
            Some("auth") if path.len() >= 3 && path[1] == "claims" => {
                Ok(Operand::Auth(path[1..].to_vec()))
            }
            Some("request") if path.len() >= 3 && path[1] == "body" => {
                Ok(Operand::Body(path[2..].to_vec()))
            }
            _ => Err(FilterError {
                position: start,
                message: "use @auth.id, @auth.role, @auth.claims.<name> or @request.body.<field>"
                    .into(),
            }),
        };
    }
    if p.starts_literal() {
        return p.literal().map(Operand::Lit);
    }
    p.path().map(Operand::Field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, Via};
    use chrono::Utc;
    use serde_json::json;

    fn rec(data: Value) -> Record {
        Record {
            collection: "posts".into(),
            id: "p1".into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            version: 1,
            data: data.as_object().cloned().unwrap_or_default(),
        }
    }

    fn who(id: &str) -> Identity {
        Identity {
            id: id.into(),
            role: Role::User,
            via: Via::Password,
            scopes: None,
            claims: json!({"team": "red", "tier": 2})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn bind(rule: &str, auth: Option<&Identity>, body: Option<&Value>) -> Bound {
        Rule::parse(rule).unwrap().bind(&RuleEnv { auth, body })
    }

    #[test]
    fn rules_bind_the_caller_and_leave_a_record_filter() {
        let alice = who("alice");
        let mine = rec(json!({"author": "alice", "published": false}));
        let theirs = rec(json!({"author": "bob", "published": false}));
        let public = rec(json!({"author": "bob", "published": true}));
        let b = bind("published = true || author = @auth.id", Some(&alice), None);
        assert!(b.admits(&mine) && b.admits(&public) && !b.admits(&theirs));
        let anon = bind("published = true || author = @auth.id", None, None);
        assert!(!anon.admits(&mine) && anon.admits(&public));
        // The value may stand on either side.
        assert!(bind("@auth.id = author", Some(&alice), None).admits(&mine));
        assert_eq!(bind("true", None, None), Bound::All);
        assert_eq!(bind("@auth.id != null", None, None), Bound::Nothing);
        assert_eq!(bind("@auth.id != null", Some(&alice), None), Bound::All);
        assert_eq!(
            bind(
                "@auth.claims.team = 'red' && @auth.claims.tier >= 2",
                Some(&alice),
                None
            ),
            Bound::All
        );
        assert_eq!(
            bind("@auth.role = 'admin'", Some(&alice), None),
            Bound::Nothing
        );
        let body = json!({"author": "bob"});
        assert_eq!(
            bind("@request.body.author = @auth.id", Some(&alice), Some(&body)),
            Bound::Nothing
        );
        assert_eq!(
            bind(
                "@request.body.author = 'bob' || false",
                Some(&alice),
                Some(&body)
            ),
            Bound::All
        );
        assert!(matches!(
            bind("author = @auth.id && views > 3", Some(&alice), None),
            Bound::Filter(_)
        ));
    }

    #[test]
    fn mistakes_are_named_with_their_position() {
        for bad in [
            "author = title",
            "'x' ~ title",
            "@auth.password = 'x'",
            "@request.query.a = 1",
            "author =",
            "(true",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
        let spec = RuleSpec {
            view: Some("author = @nope".into()),
            ..Default::default()
        };
        assert_eq!(spec.check().unwrap_err().0, RuleKind::View);
        assert_eq!(RuleSpec::default().get(RuleKind::List), None);
        let empty = RuleSpec {
            list: Some("  ".into()),
            ..Default::default()
        };
        assert_eq!(empty.get(RuleKind::List), None, "empty is admin-only");
    }

    #[test]
    fn a_bound_list_rule_narrows_the_filter() {
        let f = Filter::parse("views > 1").unwrap();
        assert_eq!(Bound::Nothing.narrow(Some(f.clone())), None);
        assert_eq!(Bound::All.narrow(Some(f.clone())), Some(Some(f.clone())));
        let r = Filter::parse("author = \"a\"").unwrap();
        assert_eq!(
            Bound::Filter(r.clone()).narrow(Some(f.clone())),
            Some(Some(Filter::And(Box::new(f), Box::new(r))))
        );
    }
}
