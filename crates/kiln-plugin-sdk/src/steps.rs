//! Graph constructs of build steps that mean the same in every frontend: the directory a
//! `WORKDIR` makes and the merge of a `COPY --link`. A frontend that builds its steps with these
//! gets the vertices (and cache keys) the Dockerfile frontend gets for the same step.

use kiln_graph::{FileAction, FileBuilder, Op, State};

use crate::perms::{self, PermsError};

/// The directory a `WORKDIR path` makes on `base`: created with its parents, mode 755, owned by
/// `user` when one is in force (`USER` before it; empty means none).
pub fn workdir(
    base: &State,
    path: &str,
    user: Option<&str>,
    description: impl Into<String>,
) -> Result<State, PermsError> {
    let owner = user
        .filter(|u| !u.is_empty())
        .map(perms::parse_chown)
        .transpose()?;
    Ok(FileBuilder::new(base)
        .action(FileAction::Mkdir {
            path: path.to_owned(),
            mode: 0o755,
            make_parents: true,
            owner,
        })
        .build(description))
}

/// A `COPY --link`: `copied` (the copy made onto scratch) merged over `below`. Its description is
/// the copy's with `LINK` after the step prefix (`[2/3] COPY a /b` → `[2/3] LINK COPY a /b`):
/// BuildKit shows both as one step.
pub fn link(below: State, copied: State, copy_description: &str) -> State {
    let description = match copy_description.split_once("] ") {
        Some((head, tail)) => format!("{head}] LINK {tail}"),
        None => format!("LINK {copy_description}"),
    };
    State::from_op(Op::Merge, vec![below, copied], description)
}

#[cfg(test)]
mod tests {
    use kiln_graph::{Chown, UserRef};

    use super::*;

    fn only_op(state: &State) -> (Op, String) {
        let def = State::definition(std::slice::from_ref(state));
        let v = def.vertices.last().expect("a vertex");
        (v.op.clone(), v.meta.description.clone())
    }

    #[test]
    fn workdirs_belong_to_the_user() {
        let st = workdir(
            &State::scratch(),
            "/app",
            Some("1000:50"),
            "[1/1] WORKDIR /app",
        )
        .unwrap();
        let (op, description) = only_op(&st);
        assert_eq!(description, "[1/1] WORKDIR /app");
        let Op::File(file) = op else {
            panic!("a file op, got {op:?}")
        };
        assert_eq!(
            file.actions[0],
            FileAction::Mkdir {
                path: "/app".into(),
                mode: 0o755,
                make_parents: true,
                owner: Some(Chown {
                    user: UserRef::Id(1000),
                    group: Some(UserRef::Id(50)),
                }),
            }
        );
        assert!(workdir(&State::scratch(), "/a", Some(""), "d").is_ok());
        assert_eq!(
            workdir(&State::scratch(), "/a", Some(":1"), "d").unwrap_err(),
            PermsError::NoUser(":1".into())
        );
    }

    #[test]
    fn links_are_merges_named_after_the_copy() {
        let merged = link(State::scratch(), State::scratch(), "[stage 2/3] COPY a /b");
        assert_eq!(
            only_op(&merged),
            (Op::Merge, "[stage 2/3] LINK COPY a /b".to_owned())
        );
        assert_eq!(
            only_op(&link(State::scratch(), State::scratch(), "COPY a /b")).1,
            "LINK COPY a /b"
        );
    }
}
