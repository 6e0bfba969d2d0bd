//! What a statement means for routing: its class (read, write, transaction control,
//! session setting, DDL), the tables it names, the shard-key values it pins, the proxy
//! hints in its comments, and, for a SELECT without a shard key, how to scatter it and
//! merge the answers.
//!
//! Parsing is sqlparser's MySQL dialect (a well-kept parser used by DataFusion and
//! others; hand-writing a MySQL grammar is how proxies get routing wrong). Statements it
//! cannot parse are routed only when a hint or a single shard makes the target clear.

use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArguments, GroupByExpr, InTarget, LimitClause, ObjectName,
    ObjectNamePart, OrderByKind, OrderBySort, SelectItem, SetExpr, Statement, TableObject,
    UnaryOperator, Use, Value,
};
use sqlparser::dialect::MySqlDialect;
use std::collections::BTreeSet;
use std::ops::ControlFlow;

#[derive(Clone, Debug, PartialEq)]
pub enum Class {
    /// A read: a replica may answer it outside a transaction.
    Read,
    /// A write (or a locking read): the primary answers it.
    Write,
    Begin,
    Commit,
    Rollback,
    /// `SET autocommit = 0|1`.
    Autocommit(bool),
    /// Any other `SET`: session state, replayed on every backend connection the session
    /// uses.
    Session,
    /// `USE db`.
    Use(String),
    /// DDL: run on every shard's primary.
    Ddl,
    /// Anything else (SHOW, EXPLAIN, ...): one shard's primary.
    Other,
    /// Answered by the proxy itself: the logical database, not a shard's.
    Local(Local),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Local {
    /// `SELECT DATABASE()` / `SELECT SCHEMA()`.
    Database,
    /// `SHOW DATABASES`: the logical databases the user may use.
    ShowDatabases,
}

/// Routing overrides in a comment: `/* tessera: shard=rz00 */`, `/* tessera: primary */`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hint {
    pub unit: Option<String>,
    pub primary: bool,
}

/// How a scattered SELECT's answers are merged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Merge {
    /// (column name or 1-based position, descending).
    pub order_by: Vec<(OrderKey, bool)>,
    pub limit: Option<u64>,
    pub offset: u64,
    /// The statement each shard runs (LIMIT widened to offset + limit, no OFFSET, and
    /// ORDER BY columns the result lacks appended to the select list).
    pub shard_sql: String,
    /// How many columns were appended for ORDER BY (dropped after the merge).
    pub hidden: usize,
    /// A prepared statement's LIMIT and OFFSET given as parameters (their indexes);
    /// [`Merge::bind`] reads them from an EXECUTE.
    pub limit_param: Option<usize>,
    pub offset_param: Option<usize>,
    /// With either: how many parameters the shard statement keeps before its own
    /// `LIMIT ?` (the LIMIT clause's parameters are the statement's last ones, and the
    /// shards get one in their place: offset + limit).
    pub kept_params: Option<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OrderKey {
    Name(String),
    Position(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    pub class: Class,
    /// Tables named (lowercase, without schema), in order of appearance.
    pub tables: Vec<String>,
    pub hint: Hint,
    /// Set for a SELECT that may be scattered; the reason it may not be, otherwise.
    pub merge: Result<Merge, String>,
    ast: Option<Statement>,
}

#[derive(Debug, PartialEq)]
pub enum ParseFailure {
    Empty,
    /// Several statements in one COM_QUERY.
    Multi,
    Syntax(String),
}

/// Parses and classifies one statement.
pub fn analyze(sql: &str) -> Result<Analysis, (ParseFailure, Hint)> {
    let hint = hints(sql);
    let mut stmts = match sqlparser::parser::Parser::parse_sql(&MySqlDialect {}, sql) {
        Ok(s) => s,
        Err(e) => return Err((ParseFailure::Syntax(e.to_string()), hint)),
    };
    let stmt = match stmts.len() {
        0 => return Err((ParseFailure::Empty, hint)),
        1 => stmts.remove(0),
        _ => return Err((ParseFailure::Multi, hint)),
    };
    let mut stmt = stmt;
    if sql.contains('?') {
        number_placeholders(sql, &mut stmt);
    }
    let mut tables = Vec::new();
    let _ = sqlparser::ast::visit_relations(&stmt, |name: &ObjectName| {
        if let Some(t) = last_part(name) {
            if !tables.contains(&t) {
                tables.push(t);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    let class = classify(&stmt);
    let merge = match &stmt {
        Statement::Query(_) if class == Class::Read => scatter_plan(&stmt),
        _ => Err("only a SELECT can span shards".into()),
    };
    Ok(Analysis {
        class,
        tables,
        hint,
        merge,
        ast: Some(stmt),
    })
}

/// Renames each `?` to `?N`, N its position among the statement's placeholders (from
/// the tokens' locations), so a shard key bound to a parameter can be found at EXECUTE.
fn number_placeholders(sql: &str, stmt: &mut Statement) {
    let Ok(tokens) =
        sqlparser::tokenizer::Tokenizer::new(&MySqlDialect {}, sql).tokenize_with_location()
    else {
        return;
    };
    let at: Vec<(u64, u64)> = tokens
        .iter()
        .filter(|t| matches!(&t.token, sqlparser::tokenizer::Token::Placeholder(p) if p == "?"))
        .map(|t| (t.span.start.line, t.span.start.column))
        .collect();
    let _ = sqlparser::ast::visit_expressions_mut(stmt, |e: &mut Expr| {
        if let Expr::Value(v) = e {
            if matches!(&v.value, Value::Placeholder(p) if p == "?") {
                let here = (v.span.start.line, v.span.start.column);
                if let Some(n) = at.iter().position(|l| *l == here) {
                    v.value = Value::Placeholder(format!("?{n}"));
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

fn last_part(name: &ObjectName) -> Option<String> {
    match name.0.last()? {
        ObjectNamePart::Identifier(i) => Some(i.value.to_ascii_lowercase()),
        _ => None,
    }
}

/// `SELECT DATABASE()` (or `SCHEMA()`), with no FROM.
fn is_select_database(q: &sqlparser::ast::Query) -> bool {
    let SetExpr::Select(s) = &*q.body else {
        return false;
    };
    if !s.from.is_empty() || s.selection.is_some() || s.projection.len() != 1 {
        return false;
    }
    let e = match &s.projection[0] {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return false,
    };
    matches!(e, Expr::Function(f) if {
        let n = f.name.to_string().to_ascii_lowercase();
        n == "database" || n == "schema"
    })
}

fn classify(stmt: &Statement) -> Class {
    match stmt {
        Statement::Query(q) if is_select_database(q) => Class::Local(Local::Database),
        Statement::ShowDatabases { .. } => Class::Local(Local::ShowDatabases),
        Statement::Query(q) => {
            if q.locks.is_empty() && !matches!(*q.body, SetExpr::Select(ref s) if s.into.is_some())
            {
                Class::Read
            } else {
                Class::Write
            }
        }
        Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) => Class::Write,
        Statement::StartTransaction { .. } => Class::Begin,
        Statement::Commit { .. } => Class::Commit,
        Statement::Rollback {
            savepoint: None, ..
        } => Class::Rollback,
        Statement::Rollback { .. } | Statement::Savepoint { .. } => Class::Write,
        Statement::Set(set) => match set {
            sqlparser::ast::Set::SingleAssignment {
                variable, values, ..
            } if last_part(variable).as_deref() == Some("autocommit") && values.len() == 1 => {
                match &values[0] {
                    Expr::Value(v) => match &v.value {
                        Value::Number(n, _) => Class::Autocommit(n != "0"),
                        Value::Boolean(b) => Class::Autocommit(*b),
                        Value::SingleQuotedString(s) => {
                            Class::Autocommit(!(s == "0" || s.eq_ignore_ascii_case("off")))
                        }
                        _ => Class::Session,
                    },
                    Expr::Identifier(i) => Class::Autocommit(!i.value.eq_ignore_ascii_case("off")),
                    _ => Class::Session,
                }
            }
            _ => Class::Session,
        },
        Statement::Use(Use::Database(n) | Use::Schema(n) | Use::Object(n)) => {
            Class::Use(match n.0.last() {
                Some(ObjectNamePart::Identifier(i)) => i.value.clone(),
                _ => String::new(),
            })
        }
        Statement::CreateTable(_)
        | Statement::AlterTable(_)
        | Statement::CreateIndex(_)
        | Statement::Drop { .. }
        | Statement::DropFunction(_)
        | Statement::Truncate(_)
        | Statement::CreateView(_) => Class::Ddl,
        _ => Class::Other,
    }
}

/// Finds `/* tessera: ... */` hints anywhere in the text.
pub fn hints(sql: &str) -> Hint {
    let mut h = Hint::default();
    let mut rest = sql;
    while let Some(i) = rest.find("/*") {
        let after = &rest[i + 2..];
        let Some(end) = after.find("*/") else { break };
        let body = after[..end].trim();
        if let Some(spec) = body.strip_prefix("tessera:") {
            for item in spec.split([',', ' ']).filter(|s| !s.is_empty()) {
                match item.split_once('=') {
                    Some(("shard" | "unit", v)) => h.unit = Some(v.trim().to_string()),
                    None if item == "primary" || item == "master" => h.primary = true,
                    _ => {}
                }
            }
        }
        rest = &after[end + 2..];
    }
    h
}

/// A shard-key value as the slot function sees it: the literal's text.
fn literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(n.clone()),
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            Value::Placeholder(p) => p
                .strip_prefix('?')
                .and_then(|n| n.parse::<usize>().ok())
                .map(super::prepared::marker),
            _ => None,
        },
        Expr::Nested(e) => literal(e),
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => literal(expr),
        _ => None,
    }
}

fn column_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(i.value.to_ascii_lowercase()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.to_ascii_lowercase()),
        Expr::Nested(e) => column_name(e),
        _ => None,
    }
}

/// The shard-key values a predicate pins, if it pins any: `k = v`, `k IN (...)`, ANDs
/// (either side pins) and ORs (both sides pin). None = any row may match.
fn pinned(e: &Expr, keys: &BTreeSet<String>) -> Option<BTreeSet<String>> {
    match e {
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::Eq => {
                if let (Some(c), Some(v)) = (column_name(left), literal(right)) {
                    keys.contains(&c).then(|| BTreeSet::from([v]))
                } else if let (Some(v), Some(c)) = (literal(left), column_name(right)) {
                    keys.contains(&c).then(|| BTreeSet::from([v]))
                } else {
                    None
                }
            }
            BinaryOperator::And => match (pinned(left, keys), pinned(right, keys)) {
                (Some(a), Some(b)) => {
                    let i: BTreeSet<String> = a.intersection(&b).cloned().collect();
                    // Contradictory pins match no row; keep one side so the statement
                    // still goes to a single shard.
                    Some(if i.is_empty() { a } else { i })
                }
                (a, b) => a.or(b),
            },
            BinaryOperator::Or => {
                let mut a = pinned(left, keys)?;
                a.extend(pinned(right, keys)?);
                Some(a)
            }
            _ => None,
        },
        Expr::In {
            expr,
            target: InTarget::List(list),
            negated: false,
            ..
        } => {
            let c = column_name(expr)?;
            if !keys.contains(&c) {
                return None;
            }
            list.iter().map(literal).collect::<Option<BTreeSet<_>>>()
        }
        Expr::Nested(e) => pinned(e, keys),
        _ => None,
    }
}

impl Analysis {
    /// The shard-key values the statement pins, given the shard-key columns of its
    /// tables: Some(values) when every row it touches has one of them, None otherwise.
    /// An INSERT's values come from its rows; a row without the key column gives None.
    pub fn key_values(&self, keys: &BTreeSet<String>) -> Option<BTreeSet<String>> {
        if keys.is_empty() {
            return None;
        }
        match self.ast.as_ref()? {
            Statement::Insert(ins) => {
                if !matches!(ins.table, TableObject::TableName(_)) {
                    return None;
                }
                let at = ins
                    .columns
                    .iter()
                    .position(|c| last_part(c).is_some_and(|c| keys.contains(&c)))?;
                let src = ins.source.as_ref()?;
                let SetExpr::Values(values) = &*src.body else {
                    return None;
                };
                values
                    .rows
                    .iter()
                    .map(|row| row.content.get(at).and_then(literal))
                    .collect()
            }
            Statement::Update(u) => pinned(u.selection.as_ref()?, keys),
            Statement::Delete(d) => pinned(d.selection.as_ref()?, keys),
            Statement::Query(q) => match &*q.body {
                SetExpr::Select(s) => pinned(s.selection.as_ref()?, keys),
                _ => None,
            },
            _ => None,
        }
    }
}

mod scatter;
use scatter::scatter_plan;

#[cfg(test)]
mod tests;
