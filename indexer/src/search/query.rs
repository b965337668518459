//! The user's query text into a Tantivy query: Tantivy's grammar and parser, bounded in size,
//! with two adjustments for people who type Lucene.
//!
//! `NOT b` alone means everything but b (so `a AND NOT b` is a without b), where Tantivy's clause
//! of only an exclusion matches nothing. And unquoted `serv*` or `se?ver` are wildcards over a
//! field's words, which Tantivy's grammar offers only for quoted phrases: they become regex
//! queries on the field's terms.

use tantivy::query::{Query, QueryParser};
use tantivy::query_grammar::{self, Delimiter, Occur, UserInputAst, UserInputBound, UserInputLeaf};

/// Longest query text accepted: the grammar recurses per nesting level.
const MAX_QUERY_BYTES: usize = 4096;
/// Deepest nesting accepted: parentheses, and `NOT`s (each one a level of the grammar too).
const MAX_QUERY_DEPTH: usize = 32;
/// Fields whose words are split by Tantivy's default tokenizer (JSON paths under `fields` too).
const WORD_FIELDS: [&str; 1] = ["message"];

/// Parses `q`; the error says what is wrong, with the position where the grammar knows it.
pub fn parse(parser: &QueryParser, q: &str) -> Result<Box<dyn Query>, String> {
    if q.len() > MAX_QUERY_BYTES {
        return Err(format!(
            "{} bytes is longer than the {MAX_QUERY_BYTES} a query may have",
            q.len()
        ));
    }
    if nesting(q) > MAX_QUERY_DEPTH {
        return Err(format!(
            "parentheses nest deeper than {MAX_QUERY_DEPTH} levels"
        ));
    }
    if negation_run(q) > MAX_QUERY_DEPTH {
        return Err(format!(
            "more than {MAX_QUERY_DEPTH} NOTs in a row: each one nests the query a level deeper"
        ));
    }
    let (ast, syntax_errors) = query_grammar::parse_query_lenient(q);
    let mut messages: Vec<String> = syntax_errors
        .iter()
        .map(|e| format!("{} at position {}", e.message, e.pos))
        .collect();
    if !messages.is_empty() && q.contains(":/") {
        messages.push(
            "a value that starts with / is a regex (/web-[0-9]+/); quote a path: \
             source:\"/var/log/app.log\""
                .into(),
        );
    }
    let operator = |token: &str| matches!(token, "AND" | "OR" | "NOT" | "&&" | "||");
    if q.split_whitespace().all(operator) && !q.trim().is_empty() {
        messages.push(
            "no term to match: AND, OR and NOT join terms (a AND b); * matches everything".into(),
        );
    } else if let Some(last) = q.split_whitespace().last().filter(|t| operator(t)) {
        // The grammar drops it and what it joined, and the query matches nothing.
        messages.push(format!("the query ends with {last}: a term must follow it"));
    }
    if let Some(why) = unbalanced(q) {
        messages.push(why);
    }
    let ast = lucene_compat(ast, &mut messages);
    let (query, errors) = parser.build_query_from_user_input_ast_lenient(ast);
    messages.extend(errors.iter().map(|e| e.to_string()));
    if messages.is_empty() {
        Ok(query)
    } else {
        Err(messages.join("; "))
    }
}

/// The deepest parenthesis nesting, quoted or not: the grammar has more kinds of quote than a
/// scan can follow (a single-quoted `'"'` once hid two thousand levels from one that skipped
/// double-quoted text), so a phrase holding more than `MAX_QUERY_DEPTH` open parentheses is
/// refused with the rest.
fn nesting(q: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0);
    for c in q.chars() {
        match c {
            '(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Parentheses outside quotes and regexes that do not pair up: the grammar drops them silently
/// and the query means something else. Inside double or single quotes, or a `/regex/` that
/// starts a term, nothing counts (a false negative at worst, never a refusal of a good query).
fn unbalanced(q: &str) -> Option<String> {
    let (mut depth, mut quote, mut escaped) = (0i64, None, false);
    let mut previous = ' ';
    for c in q.chars() {
        let starts_term = previous.is_whitespace() || matches!(previous, ':' | '(' | '+' | '-');
        previous = c;
        match (quote, c) {
            _ if escaped => escaped = false,
            (_, '\\') => escaped = true,
            (Some(open), c) if c == open => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '/') if starts_term => quote = Some('/'),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth < 0 {
                    return Some("a ) closes no (".into());
                }
            }
            _ => {}
        }
    }
    (depth > 0 && quote.is_none()).then(|| format!("{depth} ( not closed"))
}

/// The longest run of `NOT`s in a row (`NOT NOT NOT a`), the one way the grammar nests without
/// parentheses; `NOT a AND NOT b` is flat however many clauses it has.
fn negation_run(q: &str) -> usize {
    let (mut run, mut longest) = (0usize, 0);
    for token in q.split_whitespace() {
        if token == "NOT" {
            run += 1;
            longest = longest.max(run);
        } else {
            if token.starts_with("NOT(") {
                longest = longest.max(run + 1);
            }
            run = 0;
        }
    }
    longest
}

fn lucene_compat(ast: UserInputAst, errors: &mut Vec<String>) -> UserInputAst {
    match ast {
        UserInputAst::Clause(children) => {
            let mut children: Vec<_> = children
                .into_iter()
                .map(|(occur, child)| (occur, lucene_compat(child, errors)))
                .collect();
            if !children.is_empty() && children.iter().all(|(o, _)| *o == Some(Occur::MustNot)) {
                children.push((
                    Some(Occur::Must),
                    UserInputAst::Leaf(Box::new(UserInputLeaf::All)),
                ));
            }
            UserInputAst::Clause(children)
        }
        UserInputAst::Boost(inner, boost) => {
            UserInputAst::Boost(Box::new(lucene_compat(*inner, errors)), boost)
        }
        UserInputAst::Leaf(leaf) => match *leaf {
            UserInputLeaf::Literal(literal) if literal.delimiter == Delimiter::None => {
                let field = literal.field_name.as_deref().unwrap_or("message");
                match wildcard(field, &literal.phrase, literal.prefix) {
                    Ok(None) => UserInputAst::Leaf(Box::new(UserInputLeaf::Literal(literal))),
                    Ok(Some(pattern)) => UserInputAst::Leaf(Box::new(UserInputLeaf::Regex {
                        field: Some(field.to_owned()),
                        pattern,
                    })),
                    Err(why) => {
                        errors.push(why);
                        UserInputAst::Leaf(Box::new(UserInputLeaf::Literal(literal)))
                    }
                }
            }
            UserInputLeaf::Range {
                field,
                lower,
                upper,
            } => {
                let (lower, upper) = match one_number_kind(lower.clone(), upper.clone()) {
                    Ok(bounds) => bounds,
                    Err(why) => {
                        errors.push(why);
                        (lower, upper)
                    }
                };
                UserInputAst::Leaf(Box::new(UserInputLeaf::Range {
                    field,
                    lower,
                    upper,
                }))
            }
            other => UserInputAst::Leaf(Box::new(other)),
        },
    }
}

/// A range's bounds as numbers of one kind: Tantivy takes a range's number type from one bound
/// and panics when the other is not of it (`fields.cpu:[0 TO 0.99]`). A whole bound beside a
/// decimal one becomes the nearest decimal just past it, on the other side of the bound
/// (`[0 TO` is `{-5e-324 TO`): the same range, as Tantivy reads a whole decimal (`1.0`) as whole.
/// Bounds still of two kinds (a number beside a word or a time, a whole number too large for a
/// decimal to sit beside it) are refused.
fn one_number_kind(
    lower: UserInputBound,
    upper: UserInputBound,
) -> Result<(UserInputBound, UserInputBound), String> {
    let text = |bound: &UserInputBound| match bound {
        UserInputBound::Inclusive(text) | UserInputBound::Exclusive(text) => Some(text.clone()),
        UserInputBound::Unbounded => None,
    };
    let (kind_of_lower, kind_of_upper) = (
        text(&lower).map(|t| number_kind(&t)),
        text(&upper).map(|t| number_kind(&t)),
    );
    let (Some(a), Some(b)) = (kind_of_lower, kind_of_upper) else {
        return Ok((lower, upper));
    };
    if a == b {
        return Ok((lower, upper));
    }
    let nudged = |bound: UserInputBound, is_lower: bool| {
        let (inclusive, text) = match &bound {
            UserInputBound::Inclusive(text) => (true, text),
            UserInputBound::Exclusive(text) => (false, text),
            UserInputBound::Unbounded => return bound,
        };
        let value: f64 = match text.parse() {
            Ok(value) if number_kind(text) != NumberKind::Decimal => value,
            _ => return bound,
        };
        // Inclusive of v from below is exclusive of the decimal just under it, and so on.
        match (inclusive, is_lower) {
            (true, true) => UserInputBound::Exclusive(value.next_down().to_string()),
            (true, false) => UserInputBound::Exclusive(value.next_up().to_string()),
            (false, true) => UserInputBound::Inclusive(value.next_up().to_string()),
            (false, false) => UserInputBound::Inclusive(value.next_down().to_string()),
        }
    };
    let numbers = ![a, b].contains(&NumberKind::NotANumber);
    let (lower, upper) = (nudged(lower, true), nudged(upper, false));
    let kinds = (
        text(&lower).map(|t| number_kind(&t)),
        text(&upper).map(|t| number_kind(&t)),
    );
    if numbers && kinds.0 == kinds.1 {
        return Ok((lower, upper));
    }
    Err(format!(
        "the range [{} TO {}] mixes kinds of bound: both must be numbers (a decimal beside a \
         whole number too large for one is refused), or both times, or both words",
        text(&lower).unwrap_or_default(),
        text(&upper).unwrap_or_default()
    ))
}

/// A range bound's kind as Tantivy reads it: whole numbers (a whole decimal too, `1.0` or
/// `1e3`) as signed or unsigned, decimals, and anything else (a word, a time, `inf`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum NumberKind {
    Signed,
    Unsigned,
    Decimal,
    NotANumber,
}

fn number_kind(text: &str) -> NumberKind {
    if text.parse::<i64>().is_ok() {
        return NumberKind::Signed;
    }
    if text.parse::<u64>().is_ok() {
        return NumberKind::Unsigned;
    }
    match text.parse::<f64>() {
        Ok(v) if !v.is_finite() => NumberKind::NotANumber,
        Ok(v) if v.fract() != 0.0 => NumberKind::Decimal,
        Ok(v) if v >= i64::MIN as f64 && v < i64::MAX as f64 => NumberKind::Signed,
        Ok(v) if v >= 0.0 && v < u64::MAX as f64 => NumberKind::Unsigned,
        Ok(_) => NumberKind::Decimal,
        Err(_) => NumberKind::NotANumber,
    }
}

/// The regex for an unquoted word with unescaped `*` or `?` (or a trailing `*`, which the grammar
/// reports as `prefix`); `None` when the word has no wildcard.
fn wildcard(field: &str, word: &str, prefix: bool) -> Result<Option<String>, String> {
    let mut pattern = String::new();
    let mut wild = prefix;
    let mut chars = word.chars();
    let mut splits_words = false;
    // `id` keeps its case; every other field is matched lower-cased.
    let lower = field != "id";
    while let Some(c) = chars.next() {
        let (c, escaped) = match c {
            '\\' => (chars.next().unwrap_or('\\'), true),
            c => (c, false),
        };
        match c {
            '*' if !escaped => {
                wild = true;
                pattern.push_str(".*");
            }
            '?' if !escaped => {
                wild = true;
                pattern.push('.');
            }
            c if c.is_alphanumeric() => {
                if lower {
                    pattern.extend(c.to_lowercase());
                } else {
                    pattern.push(c);
                }
            }
            c => {
                splits_words = true;
                pattern.push_str(&format!("\\x{{{:x}}}", c as u32));
            }
        }
    }
    if !wild {
        return Ok(None);
    }
    if field.starts_with("fields.") || field.starts_with("container.") {
        return Err(format!(
            "`{field}:{word}`: wildcards work on message, level, host, source, stream and id, \
             not on JSON paths; search the whole value instead"
        ));
    }
    if splits_words && WORD_FIELDS.contains(&field) {
        return Err(format!(
            "`{word}`: a wildcard matches within one word, and {field} is split into words at \
             punctuation; quote the words as a phrase or wildcard one word"
        ));
    }
    if prefix {
        pattern.push_str(".*");
    }
    Ok(Some(pattern))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_become_patterns() {
        assert_eq!(wildcard("message", "Serv", true), Ok(Some("serv.*".into())));
        assert_eq!(
            wildcard("message", "se?ver", false),
            Ok(Some("se.ver".into()))
        );
        assert_eq!(
            wildcard("host", "web-*", false),
            Ok(Some("web\\x{2d}.*".into()))
        );
        assert_eq!(wildcard("id", "AB*", false), Ok(Some("AB.*".into())));
        assert_eq!(wildcard("message", "abc\\*", false), Ok(None), "escaped");
        assert_eq!(wildcard("message", "plain", false), Ok(None));
    }

    #[test]
    fn wildcards_that_cannot_match_are_refused() {
        assert!(wildcard("message", "user_*", false)
            .unwrap_err()
            .contains("one word"));
        assert!(wildcard("fields.user", "bo*", false)
            .unwrap_err()
            .contains("JSON paths"));
    }

    #[test]
    fn nesting_counts_parentheses_and_nots_wherever_they_are() {
        assert_eq!(nesting("(a OR (b AND c))"), 2);
        assert_eq!(nesting("\"((((\" AND x"), 4);
        assert_eq!(nesting(&"(".repeat(50)), 50);
        assert_eq!(
            negation_run("NOT NOT a AND (NOT(b)) AND NOTICE AND KNOT"),
            2
        );
        let flat: Vec<String> = (0..40).map(|n| format!("NOT host:h{n}")).collect();
        assert_eq!(negation_run(&flat.join(" AND ")), 1);
    }

    /// Queries that nest past the limit in ways a scan of double quotes missed are refused
    /// before the grammar recurses into them.
    #[test]
    fn deep_queries_are_refused_before_parsing() {
        let parser = QueryParser::for_index(
            &tantivy::Index::create_in_ram(crate::schema::LogSchema::new().schema.clone()),
            vec![],
        );
        let nots = format!("{}a", "NOT ".repeat(1000));
        assert!(parse(&parser, &nots).unwrap_err().contains("NOT"));
        let hidden = format!("'\"' {}a{}", "(".repeat(2000), ")".repeat(2000));
        assert!(parse(&parser, &hidden).unwrap_err().contains("nest"));
    }

    /// What people type by mistake gets a message that says what to type instead.
    #[test]
    fn a_query_of_operators_alone_or_an_unquoted_path_is_explained() {
        let parser = QueryParser::for_index(
            &tantivy::Index::create_in_ram(crate::schema::LogSchema::new().schema.clone()),
            vec![],
        );
        for operators in ["AND", "OR", "AND OR"] {
            let refused = parse(&parser, operators).map(|_| ()).unwrap_err();
            assert!(refused.contains("no term"), "{operators}: {refused}");
        }
        let refused = parse(&parser, "source:/tmp/x").map(|_| ()).unwrap_err();
        assert!(refused.contains("quote a path"), "{refused}");
        let refused = parse(&parser, "host:web AND").map(|_| ()).unwrap_err();
        assert!(refused.contains("ends with AND"), "{refused}");
        for unbalanced in ["bad((", "(a OR b", "a) OR (b"] {
            assert!(super::unbalanced(unbalanced).is_some(), "{unbalanced}");
        }
        assert_eq!(super::unbalanced("(a OR (b AND c))"), None);
        for regex in [r"message:/\([^)]*\)/", "host:/[(]/ AND (a)", "/x(/"] {
            assert_eq!(super::unbalanced(regex), None, "{regex}");
        }
        assert!(
            super::unbalanced("a/b (c").is_some(),
            "a / inside a word is no regex"
        );
        assert_eq!(super::unbalanced("\"a)\" (b) 'c(' don\\'t"), None);
        assert!(parse(&parser, "*").is_ok());
    }
}
