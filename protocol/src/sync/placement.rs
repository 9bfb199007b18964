//! Placement policy: which devices hold a replica of a store.
//!
//! A policy is a comma-separated list of entries, each naming devices that hold the
//! store:
//!
//! ```text
//! origin          the device the store was created on
//! role:home       every device of that role (home, mobile, cloud)
//! NAME            the device with that name
//! all             every device
//! sealed:ENTRY    the devices ENTRY names hold the store sealed (ciphertext only)
//! ```
//!
//! The default, `origin,role:home`, keeps data where it was produced and on the owner's
//! home devices; a cloud or phone holds a store only when the policy names it.
//!
//! A `sealed:` entry (e.g. `origin,role:home,sealed:role:cloud`) names devices that
//! keep, serve and forward the store's ciphertext without being able to read it (see
//! `crate::sealed`). A device named both ways holds the store in plaintext. A policy
//! names at least one plaintext holder: a sealed copy is kept *for* them.

use std::fmt;

use crate::capability::{Role, is_valid_name};

/// The policy of a store created without one.
pub const DEFAULT_POLICY: &str = "origin,role:home";
/// Most entries in one policy.
pub const MAX_ENTRIES: usize = 32;

/// One entry of a policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Holder {
    /// The device the store was created on.
    Origin,
    /// Every device with this role.
    Role(Role),
    /// The device with this name.
    Device(String),
    /// Every device.
    All,
}

/// Which devices hold a store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    holders: Vec<Holder>,
    sealed: Vec<Holder>,
}

/// Why a policy text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// No entries.
    #[error("a replica policy names at least one holder (e.g. origin,role:home)")]
    Empty,
    /// Too many entries.
    #[error("a replica policy has at most {MAX_ENTRIES} entries")]
    TooLong,
    /// An entry that is none of the forms.
    #[error(
        "{0:?} is not a replica holder: use origin, all, role:home|mobile|cloud, a device name, \
         or sealed: before one of these"
    )]
    BadEntry(String),
}

impl Policy {
    /// Parses a policy such as `origin,role:home,phone`.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let mut holders = Vec::new();
        let mut sealed = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (list, holder) = match entry.strip_prefix("sealed:") {
                Some(rest) => (&mut sealed, parse_holder(rest.trim(), entry)?),
                None => (&mut holders, parse_holder(entry, entry)?),
            };
            if !list.contains(&holder) {
                list.push(holder);
            }
            if holders.len() + sealed.len() > MAX_ENTRIES {
                return Err(PolicyError::TooLong);
            }
        }
        if holders.is_empty() {
            return Err(PolicyError::Empty);
        }
        Ok(Self { holders, sealed })
    }

    /// The default policy, `origin,role:home`.
    pub fn default_policy() -> Self {
        Self {
            holders: vec![Holder::Origin, Holder::Role(Role::Home)],
            sealed: Vec::new(),
        }
    }

    /// Every device.
    pub fn everywhere() -> Self {
        Self {
            holders: vec![Holder::All],
            sealed: Vec::new(),
        }
    }

    /// Does the device `name` with `role` hold the store created on `origin`?
    /// (In plaintext; see [`Policy::seals`] for sealed holders.)
    pub fn holds(&self, name: &str, role: Role, origin: &str) -> bool {
        self.holders.iter().any(|h| h.names(name, role, origin))
    }

    /// Does the device `name` with `role` hold the store sealed (named by a `sealed:`
    /// entry and by no plaintext one)?
    pub fn seals(&self, name: &str, role: Role, origin: &str) -> bool {
        !self.holds(name, role, origin) && self.sealed.iter().any(|h| h.names(name, role, origin))
    }

    /// The plaintext holders' entries.
    pub fn holders(&self) -> &[Holder] {
        &self.holders
    }

    /// The sealed holders' entries.
    pub fn sealed(&self) -> &[Holder] {
        &self.sealed
    }

    /// Does the policy name any sealed holder?
    pub fn is_sealed(&self) -> bool {
        !self.sealed.is_empty()
    }
}

impl Holder {
    /// Does this entry name the device `name` with `role`, for a store created on
    /// `origin`?
    pub fn names(&self, name: &str, role: Role, origin: &str) -> bool {
        match self {
            Holder::Origin => name == origin,
            Holder::Role(r) => *r == role,
            Holder::Device(d) => d == name,
            Holder::All => true,
        }
    }
}

fn parse_holder(text: &str, entry: &str) -> Result<Holder, PolicyError> {
    Ok(match text {
        "origin" => Holder::Origin,
        "all" | "*" => Holder::All,
        _ => match text.strip_prefix("role:") {
            Some(role) => Holder::Role(
                role.parse()
                    .map_err(|_| PolicyError::BadEntry(entry.to_owned()))?,
            ),
            None if is_valid_name(text) && !text.contains(':') => Holder::Device(text.to_owned()),
            None => return Err(PolicyError::BadEntry(entry.to_owned())),
        },
    })
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Origin => f.write_str("origin"),
            Holder::Role(role) => write!(f, "role:{role}"),
            Holder::Device(name) => f.write_str(name),
            Holder::All => f.write_str("all"),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, h) in self.holders.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{h}")?;
        }
        for h in &self.sealed {
            write!(f, ",sealed:{h}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_prints_and_decides() {
        let p = Policy::parse("origin, role:home ,phone").unwrap();
        assert_eq!(p.to_string(), "origin,role:home,phone");
        assert!(p.holds("kitchen-pi", Role::Home, "phone"));
        assert!(p.holds("phone", Role::Mobile, "laptop"));
        assert!(p.holds("laptop", Role::Mobile, "laptop"));
        assert!(!p.holds("vm", Role::Cloud, "phone"));
        assert_eq!(
            Policy::parse(DEFAULT_POLICY).unwrap(),
            Policy::default_policy()
        );
        assert!(Policy::parse("all").unwrap().holds("vm", Role::Cloud, "x"));
        for bad in ["", " , ", "role:boss", "a b", "x:y"] {
            assert!(Policy::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sealed_entries_name_ciphertext_holders_and_plaintext_wins() {
        let p =
            Policy::parse("sealed:role:cloud, origin,role:home,sealed:vm,sealed:phone").unwrap();
        assert_eq!(
            p.to_string(),
            "origin,role:home,sealed:role:cloud,sealed:vm,sealed:phone"
        );
        assert_eq!(Policy::parse(&p.to_string()).unwrap(), p);
        assert!(p.is_sealed());
        assert!(!p.holds("vm", Role::Cloud, "phone"));
        assert!(p.seals("vm", Role::Cloud, "phone"));
        // The origin is named in plaintext: plaintext wins.
        assert!(p.holds("phone", Role::Mobile, "phone"));
        assert!(!p.seals("phone", Role::Mobile, "phone"));
        assert!(!p.seals("kitchen-pi", Role::Home, "phone"));
        assert!(!Policy::default_policy().is_sealed());
        for bad in [
            "sealed:role:cloud",
            "origin,sealed:",
            "origin,sealed:x:y",
            "sealed:sealed:vm",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad:?}");
        }
    }
}
