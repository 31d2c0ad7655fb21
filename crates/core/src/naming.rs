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
}
