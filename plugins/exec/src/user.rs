//! `user[:group]` → uid, gid and supplementary groups, read from the container's own
//! `/etc/passwd` and `/etc/group` (never the host's), with runc's `GetExecUser` rules, which
//! BuildKit and Docker use.

use std::io;
use std::path::Path;

use crate::rootfs::secure_join;
use crate::Error;

/// The identity the process runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub sgids: Vec<u32>,
    /// Home directory (for `HOME` when the step does not set it).
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `spec` (`""`, `user`, `uid`, `user:group`, `uid:gid`...) in the rootfs at `root`.
pub fn resolve(root: &Path, spec: &str) -> Result<ExecUser, Error> {
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, g),
        None => (spec, ""),
    };
    let passwd = read_db(root, "/etc/passwd")?;
    let groups = read_db(root, "/etc/group")?;
    resolve_in(user_arg, group_arg, &passwd, &groups)
}

fn resolve_in(
    user_arg: &str,
    group_arg: &str,
    passwd: &str,
    group: &str,
) -> Result<ExecUser, Error> {
    let mut user = ExecUser {
        uid: 0,
        gid: 0,
        sgids: Vec::new(),
        home: "/".to_owned(),
    };
    let uid_arg = user_arg.parse::<u32>().ok();
    let entries = parse_passwd(passwd);
    // An empty user means the default one: uid 0, looked up so that root's groups apply.
    let found = entries.iter().find(|e| match (user_arg, uid_arg) {
        ("", _) => e.uid == 0,
        (_, Some(uid)) => e.uid == uid,
        (name, None) => e.name == name,
    });
    let mut matched_name = None;
    match (found, uid_arg) {
        (Some(e), _) => {
            user.uid = e.uid;
            user.gid = e.gid;
            user.home = e.home.clone();
            matched_name = Some(e.name.clone());
        }
        (None, Some(uid)) => user.uid = uid,
        (None, None) if user_arg.is_empty() => {}
        (None, None) => {
            return Err(Error::NotFound(format!(
                "unable to find user {user_arg}: no matching entries in passwd file"
            )))
        }
    }
    if !group_arg.is_empty() {
        let gid_arg = group_arg.parse::<u32>().ok();
        let groups = parse_group(group);
        let found = groups.iter().find(|g| match gid_arg {
            Some(gid) => g.gid == gid,
            None => g.name == group_arg,
        });
        user.gid = match (found, gid_arg) {
            (Some(g), _) => g.gid,
            (None, Some(gid)) => gid,
            (None, None) => {
                return Err(Error::NotFound(format!(
                    "unable to find group {group_arg}: no matching entries in group file"
                )))
            }
        };
    } else if let Some(name) = matched_name {
        // Supplementary groups only in the implicit form, as runc does: an explicit group
        // replaces the user's group memberships.
        user.sgids = parse_group(group)
            .into_iter()
            .filter(|g| g.members.contains(&name))
            .map(|g| g.gid)
            .collect();
    }
    Ok(user)
}

/// The content of a database file of the rootfs; a missing file reads as empty (scratch-based
/// images have none, and numeric ids still work).
fn read_db(root: &Path, path: &str) -> Result<String, Error> {
    let host = secure_join(root, path);
    match std::fs::read(&host) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::io("cannot read", host, e)),
    }
}

fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    records(text)
        .filter_map(|f| {
            Some(PasswdEntry {
                name: (*f.first()?).to_owned(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f
                    .get(5)
                    .map_or("/", |h| if h.is_empty() { "/" } else { h })
                    .to_owned(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    records(text)
        .filter_map(|f| {
            Some(GroupEntry {
                name: (*f.first()?).to_owned(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app\nwheel:x:10:root,app\n";

    fn r(user: &str, group: &str) -> Result<ExecUser, Error> {
        resolve_in(user, group, PASSWD, GROUP)
    }

    #[test]
    fn names_and_ids() {
        let root = r("", "").unwrap();
        assert_eq!(
            (root.uid, root.gid, root.sgids, root.home.as_str()),
            (0, 0, vec![10], "/root")
        );
        let app = r("app", "").unwrap();
        assert_eq!((app.uid, app.gid, app.sgids), (1000, 1000, vec![2000, 10]));
        assert_eq!(r("1000", "").unwrap().sgids, vec![2000, 10]);
        let unknown = r("1234", "").unwrap();
        assert_eq!(
            (unknown.uid, unknown.gid, unknown.home.as_str()),
            (1234, 0, "/")
        );
        let explicit = r("app", "extra").unwrap();
        assert_eq!((explicit.gid, explicit.sgids), (2000, vec![]));
        assert_eq!(r("app", "77").unwrap().gid, 77);
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(r("nobody", "")
            .unwrap_err()
            .to_string()
            .contains("unable to find user nobody"));
        assert!(r("app", "nogroup")
            .unwrap_err()
            .to_string()
            .contains("unable to find group"));
    }
}
