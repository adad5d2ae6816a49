//! Instructions that answer with text to run in their place (an instruction plugin's
//! [`Expansion`], e.g. `INCLUDE <file>` or a package-install instruction): the text is parsed
//! with the build file's parser and escape token, and its instructions are dispatched in the
//! current stage as if they were written there. Errors and failing steps point at the
//! expansion's own file and lines, with the chain of instructions that led there.

use dockerfile_parser::instructions::{self as ins, Instruction};
use dockerfile_parser::Node;
use kiln_plugin_sdk::proto::Expansion;

use crate::convert::{Converter, Stage};
use crate::error::{Error, Result};

/// How deep expansions may nest (an INCLUDE of a file that INCLUDEs...): deeper is surely a
/// loop the cycle check cannot see (the same file under two names).
pub(crate) const MAX_DEPTH: usize = 16;

/// The largest `first_line` accepted: the text is shifted down to it with empty lines so that
/// the parser's own line numbers are the file's.
const MAX_FIRST_LINE: u32 = 1_000_000;

/// What all the expansions of one build may add, as much as one Dockerfile may hold: the depth
/// limit alone leaves breadth exponential (a file that includes another 4096 times, which
/// includes another 4096 times...).
pub(crate) const MAX_EXPANDED_INSTRUCTIONS: usize = dockerfile_parser::MAX_INSTRUCTIONS;
/// See [`MAX_EXPANDED_INSTRUCTIONS`]; counts the text of every expansion.
pub(crate) const MAX_EXPANDED_BYTES: usize = dockerfile_parser::MAX_DOCKERFILE_BYTES;

/// What the expansions of a build have used so far.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Budget {
    instructions: usize,
    bytes: usize,
}

/// The expansions being run, outermost first.
#[derive(Clone, Debug, Default)]
pub(crate) struct Chain {
    links: Vec<Link>,
}

/// One expansion being run.
#[derive(Clone, Debug)]
struct Link {
    /// Where its text comes from.
    file: String,
    /// The line of `file` its text starts at.
    first_line: u32,
    /// The instruction that expanded to it, and where that instruction is.
    keyword: String,
    at_file: String,
    at_line: usize,
}

impl Chain {
    /// The file the instructions being dispatched come from: the innermost expansion's, or
    /// `root` (the build file) outside any expansion.
    pub(crate) fn file<'a>(&'a self, root: &'a str) -> &'a str {
        self.links.last().map_or(root, |l| l.file.as_str())
    }

    /// `(from INCLUDE at a.df:2, from INCLUDE at Dockerfile:4)`: how the user's build file
    /// led to the innermost expansion.
    fn describe(&self) -> String {
        let steps: Vec<String> = self
            .links
            .iter()
            .rev()
            .map(|l| format!("from {} at {}:{}", l.keyword, l.at_file, l.at_line))
            .collect();
        format!("({})", steps.join(", "))
    }

    /// `e`, raised by the innermost expansion's text (`text`, padded to its first line) at
    /// `line`, located in that expansion's file, its line quoted, and the chain named. An
    /// error already located in another file (a deeper expansion's) is kept as it is.
    fn locate(&self, e: Error, line: Option<usize>, text: &str) -> Error {
        let Some(inner) = self.links.last() else {
            return e;
        };
        let note = self.describe();
        if let Error::Host { error, .. } = &e {
            // Located by a deeper expansion: in another file, or in text generated in place in
            // this one (its chain then ends with this one's). It is complete as it is.
            let deeper = error
                .location
                .as_ref()
                .is_some_and(|l| l.file != inner.file || error.message.ends_with(&note[1..]));
            if deeper {
                return e;
            }
        }
        let e = match line {
            Some(l) => e.at(l),
            None => e,
        };
        let mut error = e.into_plugin_error(&inner.file, text);
        error.message = format!("{} {note}", error.message);
        Error::Host { error, line: None }
    }
}

impl Converter<'_> {
    /// Runs `exp`, the answer of the instruction `keyword` at `node` (in the file `chain`
    /// points at), in `stage`.
    pub(crate) fn run_expansion(
        &mut self,
        stage: &mut Stage,
        exp: Expansion,
        keyword: &str,
        node: &Node,
        chain: &Chain,
    ) -> Result<()> {
        let keyword = keyword.to_uppercase();
        let root = self.req.filename.as_str();
        let seen = std::iter::once((root, 1))
            .chain(chain.links.iter().map(|l| (l.file.as_str(), l.first_line)));
        if seen
            .clone()
            .any(|(file, first)| file == exp.file && first == exp.first_line)
        {
            let mut names: Vec<&str> = seen.map(|(file, _)| file).collect();
            names.push(&exp.file);
            return Err(Error::invalid(format!(
                "{keyword} cycle: {} is already being included ({})",
                exp.file,
                names.join(" -> ")
            )));
        }
        if chain.links.len() >= MAX_DEPTH {
            return Err(Error::invalid(format!(
                "{keyword} of {}: instructions expand into each other more than {MAX_DEPTH} levels deep {}",
                exp.file,
                chain.describe()
            )));
        }
        if exp.first_line == 0 || exp.first_line > MAX_FIRST_LINE {
            return Err(Error::invalid(format!(
                "the instruction plugin for {keyword} returned an expansion of {} starting at line {}, which is not a line (1 to {MAX_FIRST_LINE})",
                exp.file, exp.first_line
            )));
        }
        self.expanded.bytes = self.expanded.bytes.saturating_add(exp.source.len());
        if self.expanded.bytes > MAX_EXPANDED_BYTES {
            return Err(Error::invalid(format!(
                "{keyword} of {}: the expansions of this build hold more than {} MiB of text, the most one Dockerfile may",
                exp.file,
                MAX_EXPANDED_BYTES >> 20
            )));
        }
        let mut child = chain.clone();
        child.links.push(Link {
            file: exp.file.clone(),
            first_line: exp.first_line,
            keyword: keyword.clone(),
            at_file: chain.file(root).to_owned(),
            at_line: node.start_line,
        });
        // Empty lines up to `first_line`: the parser's line numbers are then the file's, for
        // errors, quoted lines and the steps' recorded source alike.
        let padding = usize::try_from(exp.first_line - 1).unwrap_or_default();
        let mut text = "\n".repeat(padding);
        text.push_str(&exp.source);

        let escape = self.lexer.escape();
        let parsed = dockerfile_parser::parse_with_escape(&text, escape)
            .map_err(|e| child.locate(Error::from(e), None, &text))?;
        // The text is dispatched with the build file's lexer: an escape token of its own
        // would be parsed one way and expanded another.
        if let Some(d) = parsed
            .directive("escape")
            .filter(|_| parsed.escape != escape)
        {
            let message = format!(
                "an expansion cannot change the escape token (`# escape={}`): the build file's, {escape}, applies to it too",
                d.value
            );
            return Err(child.locate(Error::invalid(message), Some(d.line), &text));
        }
        let mut instructions = Vec::with_capacity(parsed.nodes.len());
        for node in &parsed.nodes {
            let inst = ins::parse_instruction(node)
                .map_err(|e| child.locate(Error::from(e), Some(node.start_line), &text))?;
            instructions.push((inst, node));
        }
        self.expanded.instructions += instructions.len();
        if self.expanded.instructions > MAX_EXPANDED_INSTRUCTIONS {
            return Err(Error::invalid(format!(
                "{keyword} of {}: the expansions of this build add more than {MAX_EXPANDED_INSTRUCTIONS} instructions, the most one Dockerfile may hold",
                exp.file
            )));
        }
        // The step counter (`[2/5]`) counts the expansion's steps too.
        if stage.cmd_total > 0 {
            stage.cmd_total += instructions
                .iter()
                .filter(|(inst, _)| {
                    matches!(
                        inst,
                        Instruction::Copy(_)
                            | Instruction::Add(_)
                            | Instruction::Run(_)
                            | Instruction::Workdir(_)
                    )
                })
                .count();
        }
        let outer_source = stage.source.clone();
        for (inst, node) in &instructions {
            self.dispatch_expanded(stage, inst, node, &child)
                .map_err(|e| child.locate(e, Some(node.start_line), &text))?;
        }
        stage.source = outer_source;
        Ok(())
    }

    /// One instruction of an expansion.
    fn dispatch_expanded(
        &mut self,
        stage: &mut Stage,
        inst: &Instruction,
        node: &Node,
        chain: &Chain,
    ) -> Result<()> {
        let file = chain.file(&self.req.filename).to_owned();
        stage.source = Some((file, u32::try_from(node.start_line).unwrap_or(u32::MAX)));
        let lints = self.lints.len();
        let result = match inst {
            Instruction::From(_) => Err(Error::invalid(
                "FROM cannot be expanded into a stage: the instructions of an included file run in the including stage (start the stage in the build file, then include the rest)",
            )),
            Instruction::Unknown {
                keyword, args_text, ..
            } => self.dispatch_unknown(stage, keyword, args_text, node, chain),
            other => self.dispatch(stage, other, node),
        };
        // Build checks are reported at lines of the build file: an expansion's lines would
        // point at the wrong ones.
        self.lints.truncate(lints);
        result
    }
}
