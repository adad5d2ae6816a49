//! The owner and mode options of file steps (`COPY --chown=… --chmod=…`, the owner of a
//! `WORKDIR`), parsed into the graph's [`Chown`] and [`Chmod`] as BuildKit parses them.

use std::fmt;

use kiln_graph::{Chmod, Chown, UserRef};

/// Why an owner or mode was refused; the value as written is kept for the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PermsError {
    /// An owner without a user (`:staff`, ``).
    NoUser(String),
    /// Only digits, but no octal mode from 0 to 7777 (`789`, `17777`).
    BadOctal(String),
    /// Neither an octal nor a symbolic mode (`bogus`, `u+q`).
    BadMode(String),
}

impl fmt::Display for PermsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PermsError::NoUser(s) => write!(f, "invalid user {s:?}: expected user[:group]"),
            PermsError::BadOctal(s) => {
                write!(f, "invalid chmod {s:?}: an octal mode between 0 and 7777")
            }
            PermsError::BadMode(s) => write!(
                f,
                "invalid chmod {s:?}: an octal mode or a symbolic mode such as u+x,go-w"
            ),
        }
    }
}

impl std::error::Error for PermsError {}

/// `user[:group]` → owner; numbers are ids, anything else a name the engine resolves in the
/// image's `/etc/passwd` and `/etc/group`. An empty group means none.
pub fn parse_chown(s: &str) -> Result<Chown, PermsError> {
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    if user.is_empty() {
        return Err(PermsError::NoUser(s.to_owned()));
    }
    let r = |x: &str| match x.parse::<u32>() {
        Ok(id) => UserRef::Id(id),
        Err(_) => UserRef::Name(x.to_owned()),
    };
    Ok(Chown {
        user: r(user),
        group: group.filter(|g| !g.is_empty()).map(r),
    })
}

/// A mode: octal up to `7777`, else a symbolic mode of `chmod(1)` (`u+x,go-w`, `a=rX`).
pub fn parse_chmod(s: &str) -> Result<Chmod, PermsError> {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return match u32::from_str_radix(s, 8) {
            Ok(v) if v <= 0o7777 => Ok(Chmod::Octal(v)),
            _ => Err(PermsError::BadOctal(s.to_owned())),
        };
    }
    let clause_ok = |c: &str| {
        let rest = c.trim_start_matches(['u', 'g', 'o', 'a']);
        rest.starts_with(['+', '-', '='])
            && rest
                .chars()
                .all(|ch| "+-=rwxXstugo".contains(ch) || ch.is_ascii_digit())
    };
    if !s.is_empty() && s.split(',').all(clause_ok) {
        Ok(Chmod::Symbolic(s.to_owned()))
    } else {
        Err(PermsError::BadMode(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        assert_eq!(
            parse_chown("1000:50").unwrap(),
            Chown {
                user: UserRef::Id(1000),
                group: Some(UserRef::Id(50)),
            }
        );
        assert_eq!(
            parse_chown("app").unwrap(),
            Chown {
                user: UserRef::Name("app".into()),
                group: None,
            }
        );
        assert_eq!(parse_chown("app:").unwrap().group, None);
        assert_eq!(
            parse_chown(":1").unwrap_err().to_string(),
            "invalid user \":1\": expected user[:group]"
        );
    }

    #[test]
    fn modes() {
        assert_eq!(parse_chmod("755").unwrap(), Chmod::Octal(0o755));
        assert_eq!(parse_chmod("7777").unwrap(), Chmod::Octal(0o7777));
        assert_eq!(
            parse_chmod("u+x,go-w").unwrap(),
            Chmod::Symbolic("u+x,go-w".into())
        );
        for bad in ["789", "17777", "99999999999999"] {
            assert_eq!(
                parse_chmod(bad),
                Err(PermsError::BadOctal(bad.into())),
                "{bad}"
            );
        }
        for bad in ["bogus", "", "u+x,", "+q"] {
            assert_eq!(
                parse_chmod(bad),
                Err(PermsError::BadMode(bad.into())),
                "{bad}"
            );
        }
    }
}
