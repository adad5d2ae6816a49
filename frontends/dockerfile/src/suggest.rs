//! "Did you mean ...?" hints: the parser's, so that instructions, flags, stages and variables
//! all suggest alike.

pub(crate) use dockerfile_parser::suggest::closest;
