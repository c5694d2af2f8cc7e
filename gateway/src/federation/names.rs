//! Where names are mapped: a member's own tool and prompt names to the
//! names clients of a virtual server see, and back. A member's curation
//! (allow list, renames, descriptions) is applied here and nowhere else.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use crate::config::MemberConfig;

/// One member's names.
#[derive(Debug, Default)]
pub struct Names {
    /// Put before every name that is not renamed ("" for none).
    pub prefix: String,
    /// The member's own names clients may see (`None`: all).
    allow: Option<HashSet<String>>,
    /// Own name → the name clients see instead.
    rename: HashMap<String, String>,
    /// The name clients see → own name (renamed ones only).
    back: HashMap<String, String>,
    /// Own name → the description clients see instead.
    describe: HashMap<String, String>,
}

impl Names {
    pub fn new(m: &MemberConfig) -> Self {
        Self {
            prefix: m.prefix.clone(),
            allow: m.allow.as_ref().map(|a| a.iter().cloned().collect()),
            rename: m.rename.clone().into_iter().collect(),
            back: m
                .rename
                .iter()
                .map(|(o, n)| (n.clone(), o.clone()))
                .collect(),
            describe: m.describe.clone().into_iter().collect(),
        }
    }

    fn allowed(&self, own: &str) -> bool {
        self.allow.as_ref().is_none_or(|a| a.contains(own))
    }

    /// The name clients see for the member's `own` one (`None`: hidden).
    pub fn shown(&self, own: &str) -> Option<String> {
        if !self.allowed(own) {
            return None;
        }
        Some(match self.rename.get(own) {
            Some(new) => new.clone(),
            None => format!("{}{own}", self.prefix),
        })
    }

    /// The member's own name for a name clients see (`None`: not this
    /// member's, or hidden). A renamed tool answers only to its new name.
    pub fn own<'s>(&self, shown: &'s str) -> Option<Cow<'s, str>> {
        if let Some(own) = self.back.get(shown) {
            return Some(Cow::Owned(own.clone()));
        }
        let own = shown.strip_prefix(self.prefix.as_str())?;
        (!own.is_empty() && !self.rename.contains_key(own) && self.allowed(own))
            .then_some(Cow::Borrowed(own))
    }

    /// The description clients see instead of the member's, if one is set.
    pub fn description(&self, own: &str) -> Option<&str> {
        self.describe.get(own).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(prefix: &str, allow: Option<&[&str]>, rename: &[(&str, &str)]) -> Names {
        Names::new(&MemberConfig {
            pool: "p".into(),
            prefix: prefix.into(),
            allow: allow.map(|a| a.iter().map(|s| s.to_string()).collect()),
            rename: rename
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            describe: [("echo".to_string(), "Says it back".to_string())].into(),
        })
    }

    #[test]
    fn names_map_both_ways_through_prefix_rename_and_allow_list() {
        let n = names("ev_", Some(&["echo", "add", "sum"]), &[("add", "plus")]);
        assert_eq!(n.shown("echo").as_deref(), Some("ev_echo"));
        assert_eq!(n.shown("add").as_deref(), Some("plus"));
        assert_eq!(n.shown("secret"), None, "not on the allow list");
        assert_eq!(n.own("ev_echo").as_deref(), Some("echo"));
        assert_eq!(n.own("plus").as_deref(), Some("add"));
        assert_eq!(
            n.own("ev_add"),
            None,
            "a renamed tool answers to its new name only"
        );
        assert_eq!(n.own("ev_secret"), None, "hidden names are not reachable");
        assert_eq!(
            n.own("echo"),
            None,
            "without the prefix it is not this member's"
        );
        assert_eq!(n.own("ev_"), None, "the prefix alone names nothing");
        assert_eq!(n.description("echo"), Some("Says it back"));
    }

    #[test]
    fn an_empty_prefix_member_owns_every_allowed_name() {
        let n = names("", None, &[]);
        assert_eq!(n.shown("x").as_deref(), Some("x"));
        assert_eq!(n.own("anything").as_deref(), Some("anything"));
    }
}
