//! BuildKit's build checks (`frontend/dockerfile/linter`) that need no network: the rules, the
//! `# check=` / `BUILDKIT_DOCKERFILE_CHECK` configuration, and the checks themselves. File-wide
//! checks run on the parsed nodes; per-instruction checks run just before an instruction is
//! dispatched, when the stage's variables and config are known (as in BuildKit's `dispatch`).

use std::collections::BTreeSet;

use dockerfile_parser::instructions::{parse_instruction, Arg, CommandLine, From, Instruction};
use dockerfile_parser::shell::{Env, Lexer};
use dockerfile_parser::{Node, Parsed};
use kiln_plugin_sdk::proto::Diagnostic;
use kiln_types::reference::Reference;
use serde_json::json;

use crate::convert::{location, Stage};
use crate::error::{Error, Result};
use crate::{dispatch, suggest};

/// The build-arg that overrides the `# check=` directive, as in BuildKit.
pub(crate) const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

/// A build check. Names, descriptions and messages are BuildKit's, so that `skip=` lists and
/// documentation links work unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Rule {
    StageNameCasing,
    FromAsCasing,
    NoEmptyContinuation,
    ConsistentInstructionCasing,
    DuplicateStageName,
    ReservedStageName,
    JsonArgsRecommended,
    MaintainerDeprecated,
    UndefinedArgInFrom,
    WorkdirRelativePath,
    UndefinedVar,
    MultipleInstructionsDisallowed,
    LegacyKeyValueFormat,
    InvalidDefaultArgInFrom,
    SecretsUsedInArgOrEnv,
    RedundantTargetPlatform,
    FromPlatformFlagConstDisallowed,
    ExposeProtoCasing,
    ExposeInvalidFormat,
    InvalidDefinitionDescription,
    InvalidBaseImagePlatform,
    CopyIgnoredFile,
}

impl Rule {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Rule::StageNameCasing => "StageNameCasing",
            Rule::FromAsCasing => "FromAsCasing",
            Rule::NoEmptyContinuation => "NoEmptyContinuation",
            Rule::ConsistentInstructionCasing => "ConsistentInstructionCasing",
            Rule::DuplicateStageName => "DuplicateStageName",
            Rule::ReservedStageName => "ReservedStageName",
            Rule::JsonArgsRecommended => "JSONArgsRecommended",
            Rule::MaintainerDeprecated => "MaintainerDeprecated",
            Rule::UndefinedArgInFrom => "UndefinedArgInFrom",
            Rule::WorkdirRelativePath => "WorkdirRelativePath",
            Rule::UndefinedVar => "UndefinedVar",
            Rule::MultipleInstructionsDisallowed => "MultipleInstructionsDisallowed",
            Rule::LegacyKeyValueFormat => "LegacyKeyValueFormat",
            Rule::InvalidDefaultArgInFrom => "InvalidDefaultArgInFrom",
            Rule::SecretsUsedInArgOrEnv => "SecretsUsedInArgOrEnv",
            Rule::RedundantTargetPlatform => "RedundantTargetPlatform",
            Rule::FromPlatformFlagConstDisallowed => "FromPlatformFlagConstDisallowed",
            Rule::ExposeProtoCasing => "ExposeProtoCasing",
            Rule::ExposeInvalidFormat => "ExposeInvalidFormat",
            Rule::InvalidDefinitionDescription => "InvalidDefinitionDescription",
            Rule::InvalidBaseImagePlatform => "InvalidBaseImagePlatform",
            Rule::CopyIgnoredFile => "CopyIgnoredFile",
        }
    }

    pub(crate) fn description(self) -> &'static str {
        match self {
            Rule::StageNameCasing => "Stage names should be lowercase",
            Rule::FromAsCasing => "The 'as' keyword should match the case of the 'from' keyword",
            Rule::NoEmptyContinuation => {
                "Empty continuation lines will become errors in a future release"
            }
            Rule::ConsistentInstructionCasing => {
                "All commands within the Dockerfile should use the same casing (either upper or lower)"
            }
            Rule::DuplicateStageName => "Stage names should be unique",
            Rule::ReservedStageName => "Reserved words should not be used as stage names",
            Rule::JsonArgsRecommended => {
                "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals"
            }
            Rule::MaintainerDeprecated => {
                "The MAINTAINER instruction is deprecated, use a label instead to define an image author"
            }
            Rule::UndefinedArgInFrom => "FROM command must use declared ARGs",
            Rule::WorkdirRelativePath => {
                "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes"
            }
            Rule::UndefinedVar => "Variables should be defined before their use",
            Rule::MultipleInstructionsDisallowed => {
                "Multiple instructions of the same type should not be used in the same stage"
            }
            Rule::LegacyKeyValueFormat => {
                "Legacy key/value format with whitespace separator should not be used"
            }
            Rule::InvalidDefaultArgInFrom => {
                "Default value for global ARG results in an empty or invalid base image name"
            }
            Rule::SecretsUsedInArgOrEnv => {
                "Sensitive data should not be used in the ARG or ENV commands"
            }
            Rule::RedundantTargetPlatform => {
                "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior"
            }
            Rule::FromPlatformFlagConstDisallowed => {
                "FROM --platform flag should not use a constant value"
            }
            Rule::ExposeProtoCasing => "Protocol in EXPOSE instruction should be lowercase",
            Rule::ExposeInvalidFormat => {
                "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release"
            }
            Rule::InvalidDefinitionDescription => {
                "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment."
            }
            Rule::InvalidBaseImagePlatform => {
                "Base image platform does not match expected target platform"
            }
            Rule::CopyIgnoredFile => "Attempting to Copy file that is excluded by .dockerignore",
        }
    }

    /// An experimental rule runs only when `experimental=` names it (or says `all`), and
    /// `skip=` does not apply to it, as in BuildKit.
    pub(crate) fn experimental(self) -> bool {
        matches!(self, Rule::InvalidDefinitionDescription)
    }

    /// Whether a `# check=` comment above an instruction can turn the rule off there. BuildKit
    /// runs these file-wide rules with the file's configuration only, before (or outside) the
    /// per-instruction parsing and dispatch that merge the comment's.
    fn per_instruction(self) -> bool {
        !matches!(
            self,
            Rule::NoEmptyContinuation
                | Rule::ConsistentInstructionCasing
                | Rule::DuplicateStageName
                | Rule::ReservedStageName
                | Rule::InvalidDefaultArgInFrom
                | Rule::InvalidBaseImagePlatform
        )
    }

    /// BuildKit's documentation page of the rule; InvalidBaseImagePlatform has none.
    pub(crate) fn url(self) -> Option<String> {
        if self == Rule::InvalidBaseImagePlatform {
            return None;
        }
        let mut slug = String::new();
        // `JSONArgsRecommended` → `json-args-recommended`: a run of capitals is one word.
        let chars: Vec<char> = self.name().chars().collect();
        for (i, c) in chars.iter().enumerate() {
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            let prev_lower = i > 0 && chars.get(i - 1).is_some_and(|p| p.is_ascii_lowercase());
            if c.is_ascii_uppercase() && i > 0 && (prev_lower || next_lower) {
                slug.push('-');
            }
            slug.push(c.to_ascii_lowercase());
        }
        Some(format!(
            "https://docs.docker.com/go/dockerfile/rule/{slug}/"
        ))
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Finding {
    pub(crate) rule: Rule,
    /// The rule's message for this case (BuildKit's `detail`).
    pub(crate) detail: String,
    /// 1-based line.
    pub(crate) line: usize,
}

impl Finding {
    /// `Rule: detail (line N)`, BuildKit's `LintFormatShort`.
    pub(crate) fn short(&self) -> String {
        format!("{}: {} (line {})", self.rule.name(), self.detail, self.line)
    }
}

/// `# check=skip=A,B;error=true;experimental=C`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Config {
    skip: BTreeSet<String>,
    skip_all: bool,
    experimental: BTreeSet<String>,
    experimental_all: bool,
    error: bool,
}

impl Config {
    /// Parses BuildKit's check option string.
    pub(crate) fn parse(text: &str) -> std::result::Result<Config, String> {
        let mut config = Config::default();
        let text = text.trim();
        if text.is_empty() {
            return Ok(config);
        }
        for part in text.splitn(3, ';') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!("invalid check option {part:?}"));
            };
            match key.trim() {
                "skip" => {
                    let value = value.trim();
                    if value == "all" {
                        config.skip_all = true;
                    } else {
                        config
                            .skip
                            .extend(value.split(',').map(|r| r.trim().to_owned()));
                    }
                }
                "experimental" => {
                    let value = value.trim();
                    if value == "all" {
                        config.experimental_all = true;
                    } else {
                        config
                            .experimental
                            .extend(value.split(',').map(|r| r.trim().to_owned()));
                    }
                }
                "error" => {
                    config.error = parse_go_bool(value.trim())
                        .ok_or_else(|| format!("failed to parse check option {part:?}"))?;
                }
                other => return Err(format!("invalid check option {other:?}")),
            }
        }
        Ok(config)
    }
}

/// The configuration a `check=` comment above an instruction adds: the first comment that
/// reads as a `check` directive counts, its value up to the first space; one that does not
/// parse adds nothing (BuildKit ignores it there). `error=` is not merged, as in BuildKit.
fn comment_config(comments: &[String]) -> Option<Config> {
    let value = comments.iter().find_map(|c| {
        let (name, value) = c.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("check")
            .then(|| value.trim())
    })?;
    let value = value.split(' ').next().unwrap_or_default();
    let mut config = Config::parse(value).ok()?;
    config.error = false;
    Some(config)
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Collects findings, honouring the configuration.
#[derive(Debug, Default)]
pub(crate) struct Linter {
    config: Config,
    /// `# check=` in the comment block right above an instruction: first line of the
    /// instruction → (its last line, the configuration added for findings on it), as
    /// BuildKit's `WithMergedConfigFromComments`.
    local: std::collections::BTreeMap<usize, (usize, Config)>,
    pub(crate) findings: Vec<Finding>,
    /// The same findings, for the duplicate check: scanning `findings` made a line with
    /// thousands of undefined variables quadratic.
    seen: std::collections::HashSet<Finding>,
}

impl Linter {
    /// Reads the configuration: `--build-arg BUILDKIT_DOCKERFILE_CHECK=` wins over the
    /// `# check=` directive, as in BuildKit. A bad value is an error at the directive's line.
    pub(crate) fn configure(
        &mut self,
        parsed: &Parsed,
        build_args: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        let (text, line) = match build_args.get(CHECK_BUILD_ARG) {
            Some(v) => (v.as_str(), None),
            None => match parsed.directive("check") {
                Some(d) => (d.value.as_str(), Some(d.line)),
                None => ("", None),
            },
        };
        self.config = Config::parse(text).map_err(|e| {
            let e = Error::invalid(format!("failed to parse check options: {e}"));
            match line {
                Some(l) => e.at(l),
                None => e,
            }
        })?;
        self.local = parsed
            .nodes
            .iter()
            .filter_map(|n| Some((n.start_line, (n.end_line, comment_config(&n.comments)?))))
            .collect();
        Ok(())
    }

    pub(crate) fn report(&mut self, rule: Rule, line: usize, detail: String) {
        let local = self
            .local
            .range(..=line)
            .next_back()
            .filter(|(_, (end, _))| line <= *end && rule.per_instruction())
            .map(|(_, (_, c))| c);
        let name = rule.name();
        let enabled = if rule.experimental() {
            [Some(&self.config), local]
                .into_iter()
                .flatten()
                .any(|c| c.experimental_all || c.experimental.contains(name))
        } else {
            [Some(&self.config), local]
                .into_iter()
                .flatten()
                .all(|c| !c.skip_all && !c.skip.contains(name))
        };
        if !enabled {
            return;
        }
        // Details quote names from the file, which can be as long as a line.
        let detail = dockerfile_parser::short_message(detail);
        let finding = Finding { rule, detail, line };
        // The same instruction can be checked twice (a stage reached twice, or a word seen
        // by two checks); one finding is enough.
        if self.seen.insert(finding.clone()) {
            self.findings.push(finding);
        }
    }

    /// The findings as warnings, sorted by line.
    pub(crate) fn diagnostics(&self, file: &str) -> Vec<Diagnostic> {
        self.sorted()
            .into_iter()
            .map(|f| Diagnostic {
                message: f.short(),
                location: Some(location(file, f.line)),
            })
            .collect()
    }

    fn sorted(&self) -> Vec<&Finding> {
        let mut v: Vec<&Finding> = self.findings.iter().collect();
        v.sort_by_key(|f| f.line);
        v
    }

    /// With `error=true`, any finding fails the build: the error names the first finding, at
    /// its line, and how many there are.
    pub(crate) fn error(&self) -> Option<Error> {
        if !self.config.error {
            return None;
        }
        let sorted = self.sorted();
        let first = sorted.first()?;
        let rules: BTreeSet<&str> = sorted.iter().map(|f| f.rule.name()).collect();
        let rules: Vec<&str> = rules.into_iter().collect();
        Some(
            Error::invalid(format!(
                "lint violation found for rules: {} ({} finding{}, first: {}; \
                 the check directive sets error=true)",
                rules.join(", "),
                sorted.len(),
                if sorted.len() == 1 { "" } else { "s" },
                first.short()
            ))
            .at(first.line),
        )
    }

    /// The findings as the `--call check` JSON list.
    pub(crate) fn to_json(&self, file: &str) -> Vec<serde_json::Value> {
        self.sorted()
            .into_iter()
            .map(|f| {
                let mut v = json!({
                    "ruleName": f.rule.name(),
                    "description": f.rule.description(),
                    "detail": f.detail,
                    "location": { "file": file, "line": f.line },
                });
                // BuildKit leaves out an empty URL (`omitempty`).
                if let (Some(url), Some(map)) = (f.rule.url(), v.as_object_mut()) {
                    map.insert("url".to_owned(), url.into());
                }
                v
            })
            .collect()
    }
}

fn self_consistent(s: &str) -> bool {
    s == s.to_lowercase() || s == s.to_uppercase()
}

/// The checks that look at the file alone: stage names, keyword casing, MAINTAINER.
pub(crate) fn check_file(linter: &mut Linter, parsed: &Parsed) {
    // BuildKit counts the instructions of stages only (meta ARGs before the first FROM are not
    // part of a stage).
    let first_from = parsed.nodes.iter().position(|n| n.command == "from");
    let staged = first_from.map_or(&[][..], |i| &parsed.nodes[i..]);
    let (mut lower, mut upper) = (0usize, 0usize);
    for n in staged {
        if self_consistent(&n.keyword) {
            if n.keyword == n.keyword.to_lowercase() {
                lower += 1;
            } else {
                upper += 1;
            }
        }
    }
    let majority_lower = lower > upper;
    let mut names: BTreeSet<String> = BTreeSet::new();
    for n in staged {
        let wrong = if majority_lower && n.keyword.to_lowercase() != n.keyword {
            Some("lowercase")
        } else if !majority_lower && n.keyword.to_uppercase() != n.keyword {
            Some("uppercase")
        } else {
            None
        };
        if let Some(casing) = wrong {
            linter.report(
                Rule::ConsistentInstructionCasing,
                n.start_line,
                format!(
                    "Command '{}' should match the case of the command majority ({casing})",
                    n.keyword
                ),
            );
        }
        if n.command == "from" {
            check_from(linter, n, &mut names);
        }
    }
    for n in &parsed.nodes {
        if n.command == "maintainer" {
            linter.report(
                Rule::MaintainerDeprecated,
                n.start_line,
                "Maintainer instruction is deprecated in favor of using label".to_owned(),
            );
        }
    }
    check_from_defaults(linter, parsed);
    check_descriptions(linter, parsed);
    // The parser's only warning is an empty line inside a continuation; BuildKit turns it into
    // this rule, at the instruction's last line.
    for w in &parsed.warnings {
        linter.report(
            Rule::NoEmptyContinuation,
            w.end_line,
            "Empty continuation line".to_owned(),
        );
    }
}

/// InvalidDefinitionDescription: the comment right above an ARG or a named FROM describes it
/// only if its first word is the name (`# version the release to build`). The last comment
/// line counts, as in BuildKit's `validateDefinitionDescription`.
fn check_descriptions(linter: &mut Linter, parsed: &Parsed) {
    for n in &parsed.nodes {
        // Only ARG and FROM are parsed again: the rest cannot carry a description.
        let Some(last) = n.comments.last() else {
            continue;
        };
        if n.command != "arg" && n.command != "from" {
            continue;
        }
        let (instruction, keys): (&str, Vec<String>) = match parse_instruction(n) {
            Ok(Instruction::From(f)) => match f.stage_name {
                Some(name) => ("FROM", vec![name]),
                None => continue,
            },
            Ok(Instruction::Arg(args)) => ("ARG", args.into_iter().map(|a| a.name).collect()),
            _ => continue,
        };
        let first = last.split(' ').next().unwrap_or_default();
        if keys.is_empty() || keys.iter().any(|k| k == first) {
            continue;
        }
        let example = match keys.as_slice() {
            [one] => one.as_str(),
            _ => "<arg_key>",
        };
        linter.report(
            Rule::InvalidDefinitionDescription,
            n.start_line,
            format!(
                "Comment for {instruction} should follow the format: `# {example} <description>`"
            ),
        );
    }
}

/// The checks of every FROM against the global ARGs as written, without `--build-arg`s
/// (BuildKit's `validateBaseImagesWithDefaultArgs`, `reportRedundantTargetPlatform` and
/// `reportConstPlatformDisallowed`): InvalidDefaultArgInFrom, RedundantTargetPlatform,
/// FromPlatformFlagConstDisallowed.
///
/// The predefined platform ARGs take this machine's platform for both build and target: the
/// checks only ask whether a name is a valid reference, whether a word is `$TARGETPLATFORM`
/// alone, or whether it holds a variable at all, which no platform value changes.
fn check_from_defaults(linter: &mut Linter, parsed: &Parsed) {
    let lexer = Lexer::new(parsed.escape);
    let mut froms: Vec<(usize, From)> = Vec::new();
    let mut meta: Vec<(usize, Vec<Arg>)> = Vec::new();
    for n in parsed
        .nodes
        .iter()
        .filter(|n| n.command == "from" || n.command == "arg")
    {
        match parse_instruction(n) {
            Ok(Instruction::From(f)) => froms.push((n.start_line, f)),
            Ok(Instruction::Arg(a)) if froms.is_empty() => meta.push((n.start_line, a)),
            _ => {}
        }
    }
    let host = kiln_types::Platform::host();
    let target_stage = froms
        .last()
        .and_then(|(_, f)| f.stage_name.clone())
        .unwrap_or_else(|| "default".to_owned());
    let mut args: Vec<(String, String)> = kiln_types::platform::build_args(&host, &host)
        .into_iter()
        .chain([("TARGETSTAGE", target_stage)])
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    // An ARG without a default stays undeclared here: that is what makes `FROM $IMAGE` empty.
    // An expansion error stops the checks, as in BuildKit; the build reports it.
    for (_, list) in &meta {
        for arg in list {
            if let Some(d) = &arg.default {
                let Ok(v) = lexer.process_word(d, &args) else {
                    return;
                };
                args.push((arg.name.clone(), v));
            }
        }
    }
    for (line, from) in &froms {
        let Ok((name, _, _)) = lexer.process_word_with_matches(&from.image, &args) else {
            return;
        };
        // `oci-layout://` bases are kiln's own; they are not registry references.
        if !name.contains("://") && Reference::parse_normalized(&name).is_err() {
            linter.report(
                Rule::InvalidDefaultArgInFrom,
                *line,
                format!(
                    "Default value for ARG {} results in empty or invalid base image name",
                    from.image
                ),
            );
        }
        let Some(platform) = &from.platform else {
            continue;
        };
        let Ok((value, matched, unmatched)) = lexer.process_word_with_matches(platform, &args)
        else {
            continue;
        };
        // `$TARGETPLATFORM` alone: one variable, found, and the word is its whole value (a
        // modifier such as `${TARGETPLATFORM%/*}` changes it).
        let target = Env::get(&args, "TARGETPLATFORM");
        if unmatched.is_empty()
            && matched.len() == 1
            && matched.contains("TARGETPLATFORM")
            && Some(value.as_str()) == target
        {
            linter.report(
                Rule::RedundantTargetPlatform,
                *line,
                format!(
                    "Setting platform to predefined {platform} in FROM is redundant as this is the default behavior"
                ),
            );
        }
        // A constant platform is fine in a stage named after it (`AS build_amd64`).
        if matched.is_empty() && unmatched.is_empty() {
            if let Ok(p) = value.parse::<kiln_types::Platform>() {
                let stage = from.stage_name.as_deref().unwrap_or_default();
                if !stage.contains(p.os.as_str()) && !stage.contains(p.architecture.as_str()) {
                    linter.report(
                        Rule::FromPlatformFlagConstDisallowed,
                        *line,
                        format!("FROM --platform flag should not use constant value {value:?}"),
                    );
                }
            }
        }
    }
}

/// SecretsUsedInArgOrEnv for one ARG or ENV name. BuildKit's pattern,
/// `(?i)(?:_|^)(?:apikey|auth|...)(?:_|$)`, matches a whole `_`-separated part of the name;
/// a part in the allow list (`public`, `file`, `version`) clears it.
fn check_secret_name(linter: &mut Linter, instruction: &str, key: &str, line: usize) {
    const DENY: [&str; 10] = [
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    const ALLOW: [&str; 3] = ["public", "file", "version"];
    let has = |words: &[&str]| {
        key.split('_')
            .any(|part| words.iter().any(|w| part.eq_ignore_ascii_case(w)))
    };
    if has(&DENY) && !has(&ALLOW) {
        linter.report(
            Rule::SecretsUsedInArgOrEnv,
            line,
            format!(
                "Do not use ARG or ENV instructions for sensitive data ({instruction} {key:?})"
            ),
        );
    }
}

/// ExposeProtoCasing and ExposeInvalidFormat for the expanded words of an EXPOSE, split as
/// BuildKit's `parsePort` does (`[ip:][hostPort:]containerPort[/proto]`). A port the build
/// refuses for its protocol part (no port, unknown protocol) is left to that error; BuildKit
/// checks before it looks at the address and the numbers.
fn check_expose(linter: &mut Linter, stage: &Stage, lexer: &Lexer, words: &[String], line: usize) {
    let scope = stage.scope();
    for word in words {
        let Ok(ports) = lexer.process_words(word, &scope) else {
            continue;
        };
        for raw in ports {
            let (ip, host_port, container) = dispatch::split_port(&raw);
            let Ok((proto, _)) = dispatch::split_proto_port(container) else {
                continue;
            };
            if proto != proto.to_lowercase() {
                linter.report(
                    Rule::ExposeProtoCasing,
                    line,
                    format!("Defined protocol '{raw}' in EXPOSE instruction should be lowercase"),
                );
            }
            if !ip.is_empty() || !host_port.is_empty() {
                linter.report(
                    Rule::ExposeInvalidFormat,
                    line,
                    format!(
                        "EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'"
                    ),
                );
            }
        }
    }
}

/// InvalidBaseImagePlatform: the detail when the config of the image `name` (as the FROM
/// names it) is for another OS or architecture than `expected`, the platform asked for.
/// BuildKit compares the fields as the config writes them and shows both normalized.
pub(crate) fn base_image_platform(
    name: &str,
    expected: &kiln_types::Platform,
    actual: &kiln_types::image::ImageConfig,
) -> Option<String> {
    let (os, arch, _) = normalize(&expected.os, &expected.architecture, None);
    if os == actual.os && arch == actual.architecture {
        return None;
    }
    let expected = format_platform(
        &expected.os,
        &expected.architecture,
        expected.variant.as_deref(),
    );
    let actual = format_platform(&actual.os, &actual.architecture, actual.variant.as_deref());
    Some(format!(
        "Base image {name} was pulled with platform {actual:?}, expected {expected:?} for current build"
    ))
}

/// containerd's `platforms.FormatAll(platforms.Normalize(p))` for a platform without OS
/// version or features: `os/arch[/variant]`, empty parts left out.
fn format_platform(os: &str, arch: &str, variant: Option<&str>) -> String {
    let (os, arch, variant) = normalize(os, arch, variant);
    [os, arch, variant]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

/// containerd's `platforms.Normalize` of OS, architecture and variant (`x86_64` → `amd64`,
/// `aarch64/v8` → `arm64`, `arm` → `arm/v7`...); an empty OS is the host's.
fn normalize(os: &str, arch: &str, variant: Option<&str>) -> (String, String, String) {
    let os = match os.to_lowercase().as_str() {
        "" => kiln_types::Platform::host().os,
        "macos" => "darwin".to_owned(),
        other => other.to_owned(),
    };
    let (arch, variant) = (
        arch.to_lowercase(),
        variant.unwrap_or_default().to_lowercase(),
    );
    let (arch, variant) = match (arch.as_str(), variant.as_str()) {
        ("i386", _) => ("386", ""),
        ("x86_64" | "x86-64" | "amd64", "v1") => ("amd64", ""),
        ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v),
        ("aarch64" | "arm64", "8" | "v8" | "v8.0") => ("arm64", ""),
        ("aarch64" | "arm64", "9" | "9.0" | "v9.0") => ("arm64", "v9"),
        ("aarch64" | "arm64", v) => ("arm64", v),
        ("armhf", _) => ("arm", "v7"),
        ("armel", _) => ("arm", "v6"),
        ("arm", "" | "7") => ("arm", "v7"),
        ("arm", "5") => ("arm", "v5"),
        ("arm", "6") => ("arm", "v6"),
        ("arm", "8") => ("arm", "v8"),
        (a, v) => (a, v),
    };
    (os, arch.to_owned(), variant.to_owned())
}

/// CopyIgnoredFile for one local source of a COPY or ADD (`add`), as BuildKit's
/// `validateCopySourcePath`: the detail when `.dockerignore` excludes it. Nothing is said when
/// the patterns re-include anything (`!`): whether a file below an excluded directory comes back
/// cannot be told from the patterns alone. The context root (`.`, `/`) counts only for a
/// pattern that excludes every top-level entry.
pub(crate) fn copy_ignored_file(
    matcher: &kiln_ignore::PatternMatcher,
    source: &str,
    add: bool,
) -> Option<String> {
    if matcher.exclusions() {
        return None;
    }
    let source = kiln_plugin_sdk::paths::clean(source);
    if (source == "." || source == "/")
        && !matcher
            .patterns()
            .iter()
            .any(|p| !p.is_exclusion() && ["*", "**", "**/*"].contains(&p.as_str()))
    {
        return None;
    }
    // A pattern that cannot be evaluated fails the context transfer; the check stays silent.
    if !matcher.matches_or_parent_matches(&source).unwrap_or(false) {
        return None;
    }
    let verb = if add { "Add" } else { "Copy" };
    Some(format!(
        "Attempting to {verb} file {source:?} that is excluded by .dockerignore"
    ))
}

fn check_from(linter: &mut Linter, n: &Node, names: &mut BTreeSet<String>) {
    let [_, as_kw, stage] = n.args.as_slice() else {
        return;
    };
    if *stage != stage.to_lowercase() {
        linter.report(
            Rule::StageNameCasing,
            n.start_line,
            format!("Stage name '{stage}' should be lowercase"),
        );
    }
    // A keyword of mixed case is ConsistentInstructionCasing's business.
    let as_matches = !self_consistent(&n.keyword)
        || if n.keyword == n.keyword.to_lowercase() {
            *as_kw == as_kw.to_lowercase()
        } else {
            *as_kw == as_kw.to_uppercase()
        };
    if !as_matches {
        linter.report(
            Rule::FromAsCasing,
            n.start_line,
            format!(
                "'{as_kw}' and '{}' keywords' casing do not match",
                n.keyword
            ),
        );
    }
    let name = stage.to_lowercase();
    if name == "context" || name == "scratch" {
        linter.report(
            Rule::ReservedStageName,
            n.start_line,
            format!("Stage name should not use the same name as reserved stage {name:?}"),
        );
    }
    if !names.insert(name.clone()) {
        linter.report(
            Rule::DuplicateStageName,
            n.start_line,
            format!("Duplicate stage name {name:?}, stage names should be unique"),
        );
    }
}

/// UndefinedArgInFrom for one FROM word (image or `--platform`): `unmatched` variables that no
/// global ARG declares (with or without a value) nor predefines.
pub(crate) fn check_from_args(
    linter: &mut Linter,
    line: usize,
    unmatched: &BTreeSet<String>,
    known: &BTreeSet<String>,
) {
    for var in unmatched.difference(known) {
        let mut detail = format!("FROM argument '{var}' is not declared");
        if let Some(s) = suggest::closest(var, known.iter().map(String::as_str)) {
            detail.push_str(&format!(" (did you mean {s}?)"));
        }
        linter.report(Rule::UndefinedArgInFrom, line, detail);
    }
}

/// What the per-instruction checks remember about a stage.
#[derive(Debug, Default, Clone)]
pub(crate) struct StageChecks {
    /// A WORKDIR was set in this stage or its base stages (BuildKit's `workdirSet`).
    workdir_set: bool,
    cmd: Option<usize>,
    entrypoint: Option<usize>,
    healthcheck: Option<usize>,
}

impl StageChecks {
    /// A new stage's checks: a WORKDIR set in its base stage counts, nothing else carries over.
    pub(crate) fn after(base: Option<&StageChecks>) -> Self {
        StageChecks {
            workdir_set: base.is_some_and(|b| b.workdir_set),
            ..StageChecks::default()
        }
    }
}

/// The checks BuildKit runs while dispatching an instruction, before it changes the stage.
pub(crate) fn check_instruction(
    linter: &mut Linter,
    checks: &mut StageChecks,
    stage: &Stage,
    lexer: &Lexer,
    inst: &Instruction,
    line: usize,
) {
    check_undefined_vars(linter, stage, lexer, inst, line);
    let once = |linter: &mut Linter, slot: &mut Option<usize>, name: &str| {
        // The earlier one is reported: it is the one that has no effect.
        if let Some(prev) = slot.replace(line) {
            linter.report(
                Rule::MultipleInstructionsDisallowed,
                prev,
                format!(
                    "Multiple {name} instructions should not be used in the same stage because \
                     only the last one will be used"
                ),
            );
        }
    };
    let json_args = |linter: &mut Linter, cmd: &CommandLine, name: &str| {
        let shell_set = stage
            .config
            .config
            .shell
            .as_ref()
            .is_some_and(|s| !s.is_empty());
        if matches!(cmd, CommandLine::Shell(_)) && !shell_set {
            linter.report(
                Rule::JsonArgsRecommended,
                line,
                format!(
                    "JSON arguments recommended for {name} to prevent unintended behavior \
                     related to OS signals"
                ),
            );
        }
    };
    match inst {
        Instruction::Cmd(c) => {
            once(linter, &mut checks.cmd, "CMD");
            json_args(linter, c, "CMD");
        }
        Instruction::Entrypoint(c) => {
            once(linter, &mut checks.entrypoint, "ENTRYPOINT");
            json_args(linter, c, "ENTRYPOINT");
        }
        Instruction::Healthcheck(_) => once(linter, &mut checks.healthcheck, "HEALTHCHECK"),
        Instruction::Env(pairs) | Instruction::Label(pairs) => {
            let name = if matches!(inst, Instruction::Env(_)) {
                "ENV"
            } else {
                "LABEL"
            };
            if pairs.iter().any(|p| p.no_delim) {
                linter.report(
                    Rule::LegacyKeyValueFormat,
                    line,
                    format!(
                        "\"{name} key=value\" should be used instead of legacy \"{name} key value\" format"
                    ),
                );
            }
            if name == "ENV" {
                for p in pairs {
                    check_secret_name(linter, "ENV", &p.key, line);
                }
            }
        }
        Instruction::Arg(args) => {
            for a in args {
                check_secret_name(linter, "ARG", &a.name, line);
            }
        }
        Instruction::Expose(words) => check_expose(linter, stage, lexer, words, line),
        Instruction::Workdir(path) => {
            if !checks.workdir_set {
                let path = lexer
                    .process_word(path, &stage.scope())
                    .unwrap_or_else(|_| path.clone());
                let absolute = if stage.platform.os == "windows" {
                    path.starts_with(['/', '\\']) || path.get(1..3) == Some(":\\")
                } else {
                    path.starts_with('/')
                };
                if !absolute {
                    linter.report(
                        Rule::WorkdirRelativePath,
                        line,
                        format!(
                            "Relative workdir {path:?} can have unexpected results if the base image changes"
                        ),
                    );
                }
            }
            checks.workdir_set = true;
        }
        _ => {}
    }
}

/// The words BuildKit expands for an instruction (its `SupportsSingleWordExpansion` commands;
/// RUN, CMD and ENTRYPOINT are left to the shell and not checked).
fn expanded_words(inst: &Instruction) -> Vec<&str> {
    match inst {
        Instruction::Env(p) | Instruction::Label(p) => p
            .iter()
            .flat_map(|kv| [kv.key.as_str(), kv.value.as_str()])
            .collect(),
        Instruction::Arg(args) => args.iter().filter_map(|a| a.default.as_deref()).collect(),
        Instruction::Copy(c) => c
            .sources
            .iter()
            .map(String::as_str)
            .chain([c.dest.as_str()])
            .chain(c.chown.as_deref())
            .chain(c.chmod.as_deref())
            .collect(),
        Instruction::Add(a) => a
            .sources
            .iter()
            .map(String::as_str)
            .chain([a.dest.as_str()])
            .chain(a.chown.as_deref())
            .chain(a.chmod.as_deref())
            .collect(),
        Instruction::Expose(v) | Instruction::Volume(v) => v.iter().map(String::as_str).collect(),
        Instruction::Workdir(w) | Instruction::User(w) | Instruction::StopSignal(w) => vec![w],
        _ => Vec::new(),
    }
}

fn check_undefined_vars(
    linter: &mut Linter,
    stage: &Stage,
    lexer: &Lexer,
    inst: &Instruction,
    line: usize,
) {
    let scope = stage.scope();
    // An ARG declared without a value is defined, just empty (BuildKit drops build args from
    // the unmatched set).
    let declared: BTreeSet<&str> = stage.args.iter().map(|(k, _)| k.as_str()).collect();
    let mut unmatched: BTreeSet<String> = BTreeSet::new();
    for word in expanded_words(inst) {
        if let Ok((_, _, missing)) = lexer.process_word_with_matches(word, &scope) {
            unmatched.extend(
                missing
                    .into_iter()
                    .filter(|v| !declared.contains(v.as_str())),
            );
        }
    }
    if unmatched.is_empty() {
        return;
    }
    let env = stage.config.config.env.as_deref().unwrap_or_default();
    let options: Vec<&str> = env
        .iter()
        .map(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k))
        .chain(declared.iter().copied())
        .filter(|k| scope.get(k).is_some())
        .collect();
    for var in unmatched {
        let mut detail = format!("Usage of undefined variable '${var}'");
        if let Some(s) = suggest::closest(&var, options.iter().copied()) {
            detail.push_str(&format!(" (did you mean ${s}?)"));
        }
        linter.report(Rule::UndefinedVar, line, detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_and_urls() {
        let c = Config::parse("skip=FromAsCasing, StageNameCasing;error=true").unwrap();
        assert!(c.error && c.skip.contains("StageNameCasing") && !c.skip_all);
        assert!(Config::parse("skip=all").unwrap().skip_all);
        assert!(Config::parse("bogus=1").is_err());
        assert!(Config::parse("error=maybe").is_err());
        // Three options fit in one directive, as in BuildKit.
        let c =
            Config::parse("skip=all;error=true;experimental=InvalidDefinitionDescription").unwrap();
        assert!(c.skip_all && c.error && !c.experimental_all);
        assert!(c.experimental.contains("InvalidDefinitionDescription"));
        assert!(Config::parse("experimental=all").unwrap().experimental_all);
        assert_eq!(
            Rule::JsonArgsRecommended.url().as_deref(),
            Some("https://docs.docker.com/go/dockerfile/rule/json-args-recommended/")
        );
        assert_eq!(
            Rule::UndefinedArgInFrom.url().as_deref(),
            Some("https://docs.docker.com/go/dockerfile/rule/undefined-arg-in-from/")
        );
        assert_eq!(
            Rule::CopyIgnoredFile.url().as_deref(),
            Some("https://docs.docker.com/go/dockerfile/rule/copy-ignored-file/")
        );
        assert_eq!(Rule::InvalidBaseImagePlatform.url(), None);
    }
}
