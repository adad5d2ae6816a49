//! Which node builds which platform: buildx's node resolver (build/resolver/driver.go), with
//! two changes the issue asks for: platforms are spread over the nodes that build them
//! equally well, and a platform no node builds is an error instead of buildx's fallback to the
//! first node (which would then fail later, or emulate without being asked to).

use kiln_types::{Platform, PlatformMatcher};

use crate::Error;

/// What one node offers: its name and the platforms it builds, its own (native) platform
/// first, as a builder declares them (`--platform` at `builder create`) or, when none were
/// declared, as the daemon's Info reports them (`kiln serve --platform`, else the host's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The node's name (for messages).
    pub name: String,
    /// The platforms, native first.
    pub platforms: Vec<Platform>,
}

/// The platforms one node builds, in the order of `--platform`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// The node's position in the offers.
    pub node: usize,
    /// Its platforms.
    pub platforms: Vec<Platform>,
}

/// How well a node builds a platform; smaller is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Fit {
    /// 0: the node names the platform (any spelling: containerd's `OnlyStrict`, which buildx
    /// tries first); 1: one of its platforms runs it (containerd's `Only`: an amd64 node runs
    /// 386, an arm64 node arm/v7).
    loose: u8,
    /// Where in the node's list that platform comes: 0 is the node's own, the others are
    /// emulated. A node building natively beats one that would emulate.
    position: usize,
}

fn fit(offer: &Offer, target: &Platform) -> Option<Fit> {
    let strict = PlatformMatcher::strict(target);
    if let Some(position) = offer.platforms.iter().position(|p| strict.matches(p)) {
        return Some(Fit { loose: 0, position });
    }
    offer
        .platforms
        .iter()
        .position(|p| PlatformMatcher::only(p).matches(target))
        .map(|position| Fit { loose: 1, position })
}

/// Assigns each of `targets` (normalized, no repeats, in `--platform` order) to a node of
/// builder `builder`: the node that fits it best (names it before merely running it, natively
/// before emulated); among equally good nodes the one given fewest platforms so far (so that
/// two nodes declaring the same platforms share the work), then the first. The shares come in
/// node order, each with its platforms in `targets` order.
pub fn assign(builder: &str, targets: &[Platform], offers: &[Offer]) -> Result<Vec<Share>, Error> {
    let mut load = vec![0usize; offers.len()];
    let mut chosen = Vec::with_capacity(targets.len());
    for target in targets {
        let best = offers
            .iter()
            .enumerate()
            .filter_map(|(i, o)| fit(o, target).map(|f| (f, load[i], i)))
            .min()
            .map(|(_, _, i)| i);
        let Some(node) = best else {
            return Err(Error::NoNode {
                builder: builder.to_owned(),
                platform: target.to_string(),
                nodes: describe(offers),
            });
        };
        load[node] += 1;
        chosen.push(node);
    }
    let mut shares: Vec<Share> = Vec::new();
    for node in 0..offers.len() {
        let platforms: Vec<Platform> = targets
            .iter()
            .zip(&chosen)
            .filter(|(_, n)| **n == node)
            .map(|(p, _)| p.clone())
            .collect();
        if !platforms.is_empty() {
            shares.push(Share { node, platforms });
        }
    }
    Ok(shares)
}

/// `a (linux/amd64), b (linux/arm64, linux/arm/v7)`, for the error naming what exists.
fn describe(offers: &[Offer]) -> String {
    if offers.is_empty() {
        return "it has no nodes".to_owned();
    }
    let nodes: Vec<String> = offers
        .iter()
        .map(|o| {
            let ps: Vec<String> = o.platforms.iter().map(ToString::to_string).collect();
            if ps.is_empty() {
                format!("{} (no platforms)", o.name)
            } else {
                format!("{} ({})", o.name, ps.join(", "))
            }
        })
        .collect();
    format!("its nodes build {}", nodes.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse::<Platform>().expect("platform").normalize()
    }

    fn offer(name: &str, platforms: &[&str]) -> Offer {
        Offer {
            name: name.to_owned(),
            platforms: platforms.iter().map(|s| p(s)).collect(),
        }
    }

    fn ps(list: &[&str]) -> Vec<Platform> {
        list.iter().map(|s| p(s)).collect()
    }

    /// (node name, its platforms) of each share.
    fn named(offers: &[Offer], shares: &[Share]) -> Vec<(String, Vec<String>)> {
        shares
            .iter()
            .map(|s| {
                (
                    offers[s.node].name.clone(),
                    s.platforms.iter().map(ToString::to_string).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn each_platform_goes_to_the_node_that_declares_it() {
        let offers = [offer("a", &["linux/amd64"]), offer("b", &["linux/arm64"])];
        let shares = assign("two", &ps(&["linux/amd64", "linux/arm64"]), &offers).unwrap();
        assert_eq!(
            named(&offers, &shares),
            [
                ("a".to_owned(), vec!["linux/amd64".to_owned()]),
                ("b".to_owned(), vec!["linux/arm64".to_owned()]),
            ]
        );
        // The order of --platform does not change who builds what; shares are in node order.
        let shares = assign("two", &ps(&["linux/arm64", "linux/amd64"]), &offers).unwrap();
        assert_eq!(shares[0].node, 0);
        assert_eq!(shares[0].platforms, ps(&["linux/amd64"]));
        assert_eq!(shares[1].platforms, ps(&["linux/arm64"]));
    }

    #[test]
    fn a_native_node_beats_one_that_emulates() {
        // `a` is an amd64 machine that also emulates arm64 (declared second); `b` is arm64.
        let offers = [
            offer("a", &["linux/amd64", "linux/arm64"]),
            offer("b", &["linux/arm64"]),
        ];
        let shares = assign("mixed", &ps(&["linux/arm64"]), &offers).unwrap();
        assert_eq!(
            named(&offers, &shares),
            [("b".to_owned(), vec!["linux/arm64".to_owned()])]
        );
        // With no native arm64 node, the emulating one takes it.
        let shares = assign("mixed", &ps(&["linux/arm64", "linux/amd64"]), &offers[..1]).unwrap();
        assert_eq!(shares.len(), 1, "one node, one request");
        assert_eq!(shares[0].platforms, ps(&["linux/arm64", "linux/amd64"]));
    }

    #[test]
    fn equally_good_nodes_share_the_platforms() {
        let offers = [
            offer("x", &["linux/amd64", "linux/arm64", "linux/riscv64"]),
            offer("y", &["linux/amd64", "linux/arm64", "linux/riscv64"]),
        ];
        let shares = assign(
            "pair",
            &ps(&["linux/amd64", "linux/arm64", "linux/riscv64"]),
            &offers,
        )
        .unwrap();
        // amd64 is native on both: the first takes it; arm64 is emulated on both: the idle
        // one takes it; riscv64: both have one, the first in order.
        assert_eq!(
            named(&offers, &shares),
            [
                (
                    "x".to_owned(),
                    vec!["linux/amd64".to_owned(), "linux/riscv64".to_owned()]
                ),
                ("y".to_owned(), vec!["linux/arm64".to_owned()]),
            ]
        );
    }

    #[test]
    fn spellings_match_and_compatible_platforms_are_a_last_resort() {
        // `aarch64` is `arm64`; `arm64/v8` too.
        let offers = [offer("a", &["linux/amd64"]), offer("b", &["linux/aarch64"])];
        let shares = assign("s", &ps(&["linux/arm64/v8"]), &offers).unwrap();
        assert_eq!(shares[0].node, 1);
        // 386 is no node's declared platform, but an amd64 machine runs it (containerd's Only).
        let shares = assign("s", &ps(&["linux/386"]), &offers).unwrap();
        assert_eq!(shares[0].node, 0);
        // A node naming 386 beats one that merely runs it.
        let offers = [offer("a", &["linux/amd64"]), offer("c", &["linux/386"])];
        let shares = assign("s", &ps(&["linux/386"]), &offers).unwrap();
        assert_eq!(shares[0].node, 1);
    }

    #[test]
    fn a_platform_no_node_builds_is_an_error_naming_the_nodes() {
        let offers = [
            offer("a", &["linux/amd64"]),
            offer("b", &["linux/arm64", "linux/arm/v7"]),
        ];
        let err = assign("two", &ps(&["linux/amd64", "linux/s390x"]), &offers)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no node of builder \"two\" builds linux/s390x: its nodes build a (linux/amd64); \
             b (linux/arm64, linux/arm/v7)"
        );
        let err = assign("none", &ps(&["linux/amd64"]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("it has no nodes"), "{err}");
    }
}
