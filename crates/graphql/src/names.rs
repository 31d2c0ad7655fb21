//! GraphQL names for collections: `users` → type `User`, fields `user` / `userList`,
//! mutations `createUser` …, so the seed query `user(id: 123) { username posts { title } }`
//! works as written.

use std::collections::{BTreeMap, HashSet};

use polyport_core::naming::{lower_camel, singular, upper_camel};

/// Names the schema uses for one collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Names {
    /// Object type, e.g. `User`.
    pub(crate) ty: String,
    /// Single-record query field, e.g. `user`.
    pub(crate) one: String,
}

impl Names {
    pub(crate) fn list(&self) -> String {
        format!("{}List", self.one)
    }
    pub(crate) fn connection(&self) -> String {
        format!("{}Connection", self.ty)
    }
    pub(crate) fn edge(&self) -> String {
        format!("{}Edge", self.ty)
    }
    pub(crate) fn input(&self) -> String {
        format!("{}Input", self.ty)
    }
    pub(crate) fn patch(&self) -> String {
        format!("{}Patch", self.ty)
    }
    pub(crate) fn create(&self) -> String {
        format!("create{}", self.ty)
    }
    pub(crate) fn update(&self) -> String {
        format!("update{}", self.ty)
    }
    pub(crate) fn delete(&self) -> String {
        format!("delete{}", self.ty)
    }
}

/// Type names the schema defines itself; a collection never takes one of them.
pub(crate) const BUILTIN_TYPES: &[&str] = &[
    "Query",
    "Mutation",
    "Subscription",
    "PageInfo",
    "JSON",
    "Long",
    "DateTime",
    "Event",
    "RecordChange",
    "String",
    "Int",
    "Float",
    "Boolean",
    "ID",
];

/// Assigns unique names to every collection; when two collections would share a name
/// (`user` and `users`), the later one keeps its name unsingularized.
pub(crate) fn assign<'a>(collections: impl Iterator<Item = &'a str>) -> BTreeMap<String, Names> {
    let mut taken: HashSet<String> = BUILTIN_TYPES.iter().map(|s| s.to_string()).collect();
    let mut fields_taken: HashSet<String> = HashSet::new();
    let mut out = BTreeMap::new();
    for c in collections {
        let candidates = [singular(c), c.to_string(), format!("{c}_record")];
        for cand in candidates {
            let ty = upper_camel(&cand);
            let one = lower_camel(&cand);
            if !taken.contains(&ty) && !fields_taken.contains(&one) && !ty.starts_with("__") {
                taken.insert(ty.clone());
                fields_taken.insert(one.clone());
                out.insert(c.to_string(), Names { ty, one });
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_avoid_builtins() {
        let n = assign(["blog_posts", "user", "users", "events"].into_iter());
        assert_eq!(n["blog_posts"].ty, "BlogPost");
        assert_eq!(n["blog_posts"].one, "blogPost");
        assert_eq!(n["user"].ty, "User");
        assert_eq!(n["users"].ty, "Users");
        assert_eq!(n["events"].ty, "Events", "Event is a built-in type");
    }
}
