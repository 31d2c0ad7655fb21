//! Names typed faces derive from collection names: `users` → type `User`, field `user`.
//!
//! GraphQL, protobuf and WSDL generation all use these, so a collection has the same
//! type name on every typed face.

/// A naive English singular: `posts` → `post`, `categories` → `category`, `boxes` → `box`.
pub fn singular(s: &str) -> String {
    if let Some(stem) = s.strip_suffix("ies")
        && !stem.is_empty()
    {
        return format!("{stem}y");
    }
    for suffix in ["sses", "shes", "ches", "xes", "zes"] {
        if s.ends_with(suffix) {
            return s[..s.len() - 2].to_string();
        }
    }
    if s.ends_with('s') && !s.ends_with("ss") && s.len() > 1 {
        return s[..s.len() - 1].to_string();
    }
    s.to_string()
}

/// `blog_post` → `BlogPost`.
pub fn upper_camel(s: &str) -> String {
    s.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// `blog_post` → `blogPost`.
pub fn lower_camel(s: &str) -> String {
    let u = upper_camel(s);
    let mut c = u.chars();
    match c.next() {
        Some(f) => f.to_ascii_lowercase().to_string() + c.as_str(),
        None => u,
    }
}

/// The singular type name of a collection: `blog_posts` → `BlogPost`.
pub fn type_name(collection: &str) -> String {
    upper_camel(&singular(collection))
}

/// The type names one collection takes on a typed face (protobuf, WSDL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeNames {
    /// The record type, e.g. `User`.
    pub singular: String,
    /// For list operations, e.g. `Users`.
    pub plural: String,
}

/// Unique type names for collections: `users` → `User`, falling back to `Users`, then
/// `UsersRecord`, when a name `derived(singular, plural)` lists is taken by an earlier
/// collection or is `reserved`. Every face that generates types uses this, so a clash
/// resolves the same way everywhere.
pub fn assign_type_names<'a>(
    collections: impl IntoIterator<Item = &'a str>,
    reserved: &[&str],
    derived: impl Fn(&str, &str) -> Vec<String>,
) -> std::collections::BTreeMap<String, TypeNames> {
    let mut taken: std::collections::HashSet<String> =
        reserved.iter().map(|s| s.to_string()).collect();
    let mut out = std::collections::BTreeMap::new();
    for name in collections {
        let plural = upper_camel(name);
        for cand in [
            upper_camel(&singular(name)),
            plural.clone(),
            format!("{plural}Record"),
        ] {
            let names = derived(&cand, &plural);
            if names.iter().all(|d| !taken.contains(d)) {
                taken.extend(names);
                out.insert(
                    name.to_string(),
                    TypeNames {
                        singular: cand,
                        plural: plural.clone(),
                    },
                );
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
    fn singulars_and_camels() {
        assert_eq!(singular("users"), "user");
        assert_eq!(singular("posts"), "post");
        assert_eq!(singular("categories"), "category");
        assert_eq!(singular("boxes"), "box");
        assert_eq!(singular("class"), "class");
        assert_eq!(singular("data"), "data");
        assert_eq!(type_name("blog_posts"), "BlogPost");
        assert_eq!(lower_camel("blog_post"), "blogPost");
    }

    #[test]
    fn clashing_type_names_fall_back() {
        let derived = |m: &str, p: &str| vec![m.to_string(), format!("List{p}")];
        let n = assign_type_names(["user", "users", "fault"], &["Fault"], derived);
        assert_eq!(n["user"].singular, "User");
        assert_eq!(n["users"].singular, "Users");
        assert_eq!(n["fault"].singular, "FaultRecord");
    }
}
