//! The scatter plan of a SELECT without a shard key: how it runs on every shard (the
//! statement each shard gets) and how the answers are merged ([`Merge`]).

use super::*;

impl Merge {
    /// This plan with its LIMIT and OFFSET parameters bound to an EXECUTE's `values`,
    /// and the shards' LIMIT (offset + limit) when it is a parameter too.
    pub fn bind(&self, values: &[Option<String>]) -> Result<(Merge, Option<u64>), String> {
        if self.kept_params.is_none() {
            return Ok((self.clone(), None));
        }
        let value = |i: usize, what: &str| -> Result<u64, String> {
            values
                .get(i)
                .cloned()
                .flatten()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("Incorrect arguments to {what}: the parameter must be a non-negative integer"))
        };
        let mut m = self.clone();
        if let Some(i) = self.limit_param {
            m.limit = Some(value(i, "LIMIT")?);
        }
        if let Some(i) = self.offset_param {
            m.offset = value(i, "OFFSET")?;
        }
        let push = m
            .limit
            .map(|l| l.saturating_add(m.offset))
            .unwrap_or(u64::MAX);
        Ok((m, Some(push)))
    }
}

/// Whether (and how) a SELECT without a shard key can run on every shard and be merged
/// into the answer one database would give.
pub(super) fn scatter_plan(stmt: &Statement) -> Result<Merge, String> {
    let Statement::Query(q) = stmt else {
        return Err("not a SELECT".into());
    };
    let SetExpr::Select(s) = &*q.body else {
        return Err("UNION and other set operations cannot be merged across shards".into());
    };
    if q.with.is_some() {
        return Err("WITH cannot be merged across shards".into());
    }
    if s.distinct.is_some() {
        return Err("DISTINCT cannot be merged across shards".into());
    }
    if s.having.is_some() || !matches!(&s.group_by, GroupByExpr::Expressions(e, _) if e.is_empty())
    {
        return Err("GROUP BY cannot be merged across shards".into());
    }
    for item in &s.projection {
        let e = match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            _ => continue,
        };
        let mut agg = None;
        let _ = sqlparser::ast::visit_expressions(e, |e: &Expr| {
            if let Expr::Function(f) = e {
                let name = f.name.to_string().to_ascii_lowercase();
                if matches!(
                    name.as_str(),
                    "count"
                        | "sum"
                        | "min"
                        | "max"
                        | "avg"
                        | "group_concat"
                        | "std"
                        | "stddev"
                        | "variance"
                ) || matches!(f.args, FunctionArguments::Subquery(_))
                {
                    agg = Some(name);
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
        if let Some(name) = agg {
            return Err(format!(
                "the aggregate {}() cannot be merged across shards",
                name.to_uppercase()
            ));
        }
    }
    // Names the result already has (aliases and plain columns); `*` has them all.
    let wildcard = s.projection.iter().any(|i| {
        matches!(
            i,
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
        )
    });
    let named: Vec<String> = s
        .projection
        .iter()
        .filter_map(|i| match i {
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.to_ascii_lowercase()),
            SelectItem::UnnamedExpr(e) => column_name(e),
            _ => None,
        })
        .collect();
    let mut hidden_exprs = Vec::new();
    let mut order_by = Vec::new();
    if let Some(ob) = &q.order_by {
        let OrderByKind::Expressions(exprs) = &ob.kind else {
            return Err("ORDER BY ALL cannot be merged across shards".into());
        };
        for o in exprs {
            let desc = matches!(o.options.sort, Some(OrderBySort::Desc));
            let key = match &o.expr {
                Expr::Value(v) => match &v.value {
                    Value::Number(n, _) => match n.parse::<usize>() {
                        Ok(p) if p >= 1 => OrderKey::Position(p),
                        _ => return Err(format!("ORDER BY {n} is not a column position")),
                    },
                    _ => return Err("ORDER BY a constant".into()),
                },
                e => match column_name(e) {
                    Some(c) if wildcard || named.contains(&c) => OrderKey::Name(c),
                    Some(_) => {
                        // Fetch it too, under a name of its own, and drop it after sorting.
                        let alias = format!("__tessera_order_{}", hidden_exprs.len());
                        hidden_exprs.push(SelectItem::ExprWithAlias {
                            expr: e.clone(),
                            alias: sqlparser::ast::Ident::new(alias.clone()),
                        });
                        OrderKey::Name(alias)
                    }
                    None => {
                        return Err(format!(
                            "ORDER BY {e} across shards: order by a column of the result"
                        ))
                    }
                },
            };
            order_by.push((key, desc));
        }
    }
    let number = |e: &Expr| -> Result<u64, String> {
        literal(e)
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| format!("LIMIT {e} across shards: use a number"))
    };
    // A prepared statement's `?` (numbered `?N` by then) is bound at EXECUTE.
    let param = |e: &Expr| -> Option<usize> {
        match e {
            Expr::Value(v) => match &v.value {
                Value::Placeholder(p) => p.strip_prefix('?')?.parse().ok(),
                _ => None,
            },
            _ => None,
        }
    };
    let bound = |e: &Expr| -> Result<(u64, Option<usize>), String> {
        match param(e) {
            Some(i) => Ok((0, Some(i))),
            None => number(e).map(|n| (n, None)),
        }
    };
    let ((limit, limit_param), (offset, offset_param)) = match &q.limit_clause {
        None => ((None, None), (0, None)),
        Some(LimitClause::LimitOffset { limit, offset, .. }) => {
            let l = match limit.as_ref().map(bound).transpose()? {
                Some((n, p)) => (p.is_none().then_some(n), p),
                None => (None, None),
            };
            let o = offset
                .as_ref()
                .map(|o| bound(&o.value))
                .transpose()?
                .unwrap_or((0, None));
            (l, o)
        }
        Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
            let (n, p) = bound(limit)?;
            ((p.is_none().then_some(n), p), bound(offset)?)
        }
    };
    let mut shard_q = q.clone();
    let hidden = hidden_exprs.len();
    if hidden > 0 {
        if let SetExpr::Select(sel) = &mut *shard_q.body {
            sel.projection.extend(hidden_exprs);
        }
    }
    let in_limit = [limit_param, offset_param].iter().flatten().count();
    let kept_params = if in_limit > 0 {
        // The LIMIT clause's parameters must be the statement's last ones (they are,
        // unless a parameter follows LIMIT): the shards get one `?` in their place.
        let mut total = 0;
        let _ = sqlparser::ast::visit_expressions(stmt, |e: &Expr| {
            if param(e).is_some() {
                total += 1;
            }
            ControlFlow::<()>::Continue(())
        });
        let kept = total - in_limit;
        let mut trailing: Vec<usize> = [limit_param, offset_param].into_iter().flatten().collect();
        trailing.sort_unstable();
        if trailing != (kept..total).collect::<Vec<_>>() {
            return Err("a parameter after LIMIT cannot be scattered across shards".into());
        }
        shard_q.limit_clause = Some(LimitClause::LimitOffset {
            limit: Some(Expr::value(Value::Placeholder(format!("?{kept}")))),
            offset: None,
            limit_by: Vec::new(),
        });
        Some(kept)
    } else {
        if let Some(l) = limit {
            shard_q.limit_clause = Some(LimitClause::LimitOffset {
                limit: Some(Expr::value(Value::Number((l + offset).to_string(), false))),
                offset: None,
                limit_by: Vec::new(),
            });
        }
        None
    };
    let mut shard_stmt = Statement::Query(shard_q);
    let shard_sql = unnumber_placeholders(&mut shard_stmt)?;
    Ok(Merge {
        order_by,
        limit,
        offset,
        shard_sql,
        hidden,
        limit_param,
        offset_param,
        kept_params,
    })
}

/// The statement's text with its `?N` placeholders back to `?` (what a server
/// prepares), after checking that they are printed in the order they were numbered:
/// the shards must bind the client's parameters in the same places.
fn unnumber_placeholders(stmt: &mut Statement) -> Result<String, String> {
    let numbered = stmt.to_string();
    if !numbered.contains('?') {
        return Ok(numbered);
    }
    let tokens = sqlparser::tokenizer::Tokenizer::new(&MySqlDialect {}, &numbered)
        .tokenize()
        .map_err(|e| format!("the statement cannot be rewritten for the shards ({e})"))?;
    let order: Vec<String> = tokens
        .iter()
        .filter_map(|t| match t {
            sqlparser::tokenizer::Token::Placeholder(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    if order.iter().enumerate().any(|(i, p)| *p != format!("?{i}")) {
        return Err("its parameters would move when rewritten for the shards".into());
    }
    let _ = sqlparser::ast::visit_expressions_mut(stmt, |e: &mut Expr| {
        if let Expr::Value(v) = e {
            if matches!(&v.value, Value::Placeholder(p) if p.starts_with('?')) {
                v.value = Value::Placeholder("?".into());
            }
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(stmt.to_string())
}
