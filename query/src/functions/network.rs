//! Network functions over text addresses:
//!
//! | function | returns |
//! |---|---|
//! | `cidr_contains(cidr, ip)` | whether `ip` lies in `cidr` (`'10.0.0.0/8'`, `'2001:db8::/32'`, or one address) |
//! | `ip_in_cidrs(ip, cidrs)` | whether `ip` lies in any range of a comma-separated list (`'10.0.0.0/8,172.16.0.0/12'`) |
//! | `ip_family(ip)` (alias `family`, as in PostgreSQL) | 4 or 6 |
//! | `cidr_network(ip, prefix)` | the network of `ip` with `prefix` bits, as CIDR text (`'10.1.2.0/24'`), for grouping |
//!
//! Null in gives null out, and so does an address (or a per-row CIDR) that does not parse:
//! one odd row must not fail a dashboard. A malformed *constant* CIDR or prefix is the query's
//! mistake, so it fails with an error naming it. IPv4 prefixes count IPv4 bits; an IPv4 range
//! never contains an IPv6 address, except the IPv4-mapped form of its own addresses.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Int32Builder, Int64Array, StringBuilder,
};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use hawking_schemas::ip::{as_v4, ip_to_u128, parse_ip, push_ip_text};

/// An address range in the `u128` form of [`hawking_schemas::ip`] (IPv4 held IPv4-mapped,
/// so one comparison serves both families).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: u128,
    mask: u128,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x:y::/n` or a single address (a /32 or /128). Host bits after
    /// the prefix are ignored, as PostgreSQL's `inet` does.
    pub fn parse(text: &str) -> Option<Cidr> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p.trim().parse::<u8>().ok()?)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().ok()?;
        let bits = match (addr, prefix) {
            (IpAddr::V4(_), Some(p)) if p <= 32 => 96 + p as u32,
            (IpAddr::V6(_), Some(p)) if p <= 128 => p as u32,
            (_, Some(_)) => return None,
            (_, None) => 128,
        };
        let mask = mask_of(bits);
        Some(Cidr {
            network: ip_to_u128(addr) & mask,
            mask,
        })
    }

    #[inline]
    pub fn contains(&self, ip: u128) -> bool {
        ip & self.mask == self.network
    }
}

/// The mask keeping the top `bits` of a `u128`.
#[inline]
fn mask_of(bits: u32) -> u128 {
    if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits.min(128))
    }
}

/// Parses a comma-separated CIDR list into `out`; `Err` holds the first entry that does not
/// parse. Empty entries (a trailing comma) are skipped.
fn parse_cidr_list<'a>(text: &'a str, out: &mut Vec<Cidr>) -> Result<(), &'a str> {
    out.clear();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        out.push(Cidr::parse(entry).ok_or(entry)?);
    }
    Ok(())
}

/// Every network function, ready to register.
pub fn udfs() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(NetworkFn::new(Kind::CidrContains)),
        ScalarUDF::from(NetworkFn::new(Kind::IpInCidrs)),
        ScalarUDF::from(NetworkFn::new(Kind::IpFamily)),
        ScalarUDF::from(NetworkFn::new(Kind::CidrNetwork)),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    CidrContains,
    IpInCidrs,
    IpFamily,
    CidrNetwork,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct NetworkFn {
    kind: Kind,
    signature: Signature,
    aliases: Vec<String>,
}

impl NetworkFn {
    fn new(kind: Kind) -> Self {
        let aliases = match kind {
            Kind::IpFamily => vec!["family".to_string()],
            _ => Vec::new(),
        };
        NetworkFn {
            kind,
            signature: Signature::user_defined(Volatility::Immutable),
            aliases,
        }
    }

    fn name_str(&self) -> &'static str {
        match self.kind {
            Kind::CidrContains => "cidr_contains",
            Kind::IpInCidrs => "ip_in_cidrs",
            Kind::IpFamily => "ip_family",
            Kind::CidrNetwork => "cidr_network",
        }
    }

    /// What each argument must be: text, or an integer (the prefix length).
    fn params(&self) -> &'static [Param] {
        match self.kind {
            Kind::CidrContains => &[Param::Text("cidr"), Param::Text("ip")],
            Kind::IpInCidrs => &[Param::Text("ip"), Param::Text("cidrs")],
            Kind::IpFamily => &[Param::Text("ip")],
            Kind::CidrNetwork => &[Param::Text("ip"), Param::Int("prefix")],
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Param {
    Text(&'static str),
    Int(&'static str),
}

impl ScalarUDFImpl for NetworkFn {
    fn name(&self) -> &str {
        self.name_str()
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        let params = self.params();
        if arg_types.len() != params.len() {
            let names: Vec<&str> = params
                .iter()
                .map(|p| match p {
                    Param::Text(n) | Param::Int(n) => *n,
                })
                .collect();
            return plan_err!(
                "{}({}) takes {} arguments, got {}",
                self.name_str(),
                names.join(", "),
                params.len(),
                arg_types.len()
            );
        }
        params
            .iter()
            .zip(arg_types)
            .map(|(p, t)| match (p, t) {
                (Param::Text(_), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
                    Ok(t.clone())
                }
                (Param::Text(_), DataType::Null) => Ok(DataType::Utf8),
                (Param::Text(_), DataType::Dictionary(_, v))
                    if matches!(
                        v.as_ref(),
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                    ) =>
                {
                    Ok(DataType::Utf8)
                }
                (Param::Int(_), t) if t.is_integer() || t == &DataType::Null => Ok(DataType::Int64),
                (Param::Text(n), t) => plan_err!(
                    "{}: {n} must be text (an address like '10.0.0.5'), got {t}",
                    self.name_str()
                ),
                (Param::Int(n), t) => {
                    plan_err!("{}: {n} must be an integer, got {t}", self.name_str())
                }
            })
            .collect()
    }

    /// A constant range or prefix that cannot be right fails the query while it is planned,
    /// before any file is read (the same check at execution covers other paths).
    fn simplify(&self, args: Vec<Expr>, _info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        let constant = |i: usize| match args.get(i) {
            Some(Expr::Literal(v, _)) => Some(v),
            _ => None,
        };
        let name = self.name_str();
        match self.kind {
            Kind::CidrContains => {
                if let Some(Some(text)) = constant(0).map(|v| scalar_text(name, v)).transpose()?
                    && Cidr::parse(text).is_none()
                {
                    return plan_err!("{}", bad_cidr(name, text, text));
                }
            }
            Kind::IpInCidrs => {
                if let Some(Some(text)) = constant(1).map(|v| scalar_text(name, v)).transpose()?
                    && let Err(bad) = parse_cidr_list(text, &mut Vec::new())
                {
                    return plan_err!("{}", bad_cidr(name, bad, text));
                }
            }
            Kind::CidrNetwork => {
                if let Some(ScalarValue::Int64(Some(p))) = constant(1)
                    && !(0..=128).contains(p)
                {
                    return plan_err!("{}", bad_prefix(name, *p));
                }
            }
            Kind::IpFamily => {}
        }
        Ok(ExprSimplifyResult::Original(args))
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            Kind::CidrContains | Kind::IpInCidrs => DataType::Boolean,
            Kind::IpFamily => DataType::Int32,
            Kind::CidrNetwork => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let a = &args.args;
        match self.kind {
            Kind::CidrContains => cidr_contains(&a[0], &a[1], n),
            Kind::IpInCidrs => ip_in_cidrs(&a[0], &a[1], n),
            Kind::IpFamily => ip_family(&a[0], n),
            Kind::CidrNetwork => cidr_network(&a[0], &a[1], n),
        }
    }
}

fn bad_cidr(name: &str, entry: &str, text: &str) -> String {
    let place = if entry == text {
        String::new()
    } else {
        format!(" in {text:?}")
    };
    format!("{name}: {entry:?}{place} is not a CIDR range (like '10.0.0.0/8' or '2001:db8::/32')")
}

fn bad_prefix(name: &str, prefix: i64) -> String {
    format!("{name}: prefix {prefix} is not a prefix length (0-32 for IPv4, 0-128 for IPv6)")
}

/// The text of a scalar argument (`None` for SQL null).
fn scalar_text<'a>(name: &str, v: &'a ScalarValue) -> DfResult<Option<&'a str>> {
    match v {
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
            Ok(s.as_deref())
        }
        ScalarValue::Null => Ok(None),
        other => exec_err!("{name}: expected text, got {}", other.data_type()),
    }
}

/// Calls `f` with every row's text (`None` for null), without copying the strings.
fn for_each_text(name: &str, array: &ArrayRef, mut f: impl FnMut(Option<&str>)) -> DfResult<()> {
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().for_each(&mut f),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().for_each(&mut f),
        DataType::Utf8View => array.as_string_view().iter().for_each(&mut f),
        DataType::Null => (0..array.len()).for_each(|_| f(None)),
        other => return exec_err!("{name}: expected text, got {other}"),
    }
    Ok(())
}

fn boolean(mut values: BooleanBuilder) -> ColumnarValue {
    ColumnarValue::Array(Arc::new(values.finish()))
}

fn cidr_contains(cidr: &ColumnarValue, ip: &ColumnarValue, rows: usize) -> DfResult<ColumnarValue> {
    const NAME: &str = "cidr_contains";
    match cidr {
        ColumnarValue::Scalar(s) => {
            let Some(text) = scalar_text(NAME, s)? else {
                return Ok(ColumnarValue::Scalar(ScalarValue::Boolean(None)));
            };
            let Some(range) = Cidr::parse(text) else {
                return exec_err!("{}", bad_cidr(NAME, text, text));
            };
            if let ColumnarValue::Scalar(ip) = ip {
                let v = scalar_text(NAME, ip)?.and_then(parse_ip);
                return Ok(ColumnarValue::Scalar(ScalarValue::Boolean(
                    v.map(|v| range.contains(v)),
                )));
            }
            let ips = ip.to_array(rows)?;
            let mut out = BooleanBuilder::with_capacity(ips.len());
            for_each_text(NAME, &ips, |t| {
                out.append_option(t.and_then(parse_ip).map(|v| range.contains(v)))
            })?;
            Ok(boolean(out))
        }
        ColumnarValue::Array(cidrs) => {
            let ips = ip.to_array(rows)?;
            let mut ranges = Vec::with_capacity(cidrs.len());
            for_each_text(NAME, cidrs, |t| ranges.push(t.and_then(Cidr::parse)))?;
            let mut out = BooleanBuilder::with_capacity(ips.len());
            let mut i = 0;
            for_each_text(NAME, &ips, |t| {
                let r = ranges.get(i).copied().flatten();
                out.append_option(r.zip(t.and_then(parse_ip)).map(|(r, v)| r.contains(v)));
                i += 1;
            })?;
            Ok(boolean(out))
        }
    }
}

fn ip_in_cidrs(ip: &ColumnarValue, list: &ColumnarValue, rows: usize) -> DfResult<ColumnarValue> {
    const NAME: &str = "ip_in_cidrs";
    let mut ranges = Vec::new();
    match list {
        ColumnarValue::Scalar(s) => {
            let Some(text) = scalar_text(NAME, s)? else {
                return Ok(ColumnarValue::Scalar(ScalarValue::Boolean(None)));
            };
            if let Err(bad) = parse_cidr_list(text, &mut ranges) {
                return exec_err!("{}", bad_cidr(NAME, bad, text));
            }
            let in_any = |v: u128| ranges.iter().any(|r| r.contains(v));
            if let ColumnarValue::Scalar(ip) = ip {
                let v = scalar_text(NAME, ip)?.and_then(parse_ip);
                return Ok(ColumnarValue::Scalar(ScalarValue::Boolean(v.map(in_any))));
            }
            let ips = ip.to_array(rows)?;
            let mut out = BooleanBuilder::with_capacity(ips.len());
            for_each_text(NAME, &ips, |t| {
                out.append_option(t.and_then(parse_ip).map(in_any))
            })?;
            Ok(boolean(out))
        }
        ColumnarValue::Array(lists) => {
            // Lists that differ per row: parsed row by row into one reused vector.
            let ips = ip.to_array(rows)?;
            let mut parsed: Vec<Option<u128>> = Vec::with_capacity(ips.len());
            for_each_text(NAME, &ips, |t| parsed.push(t.and_then(parse_ip)))?;
            let mut out = BooleanBuilder::with_capacity(parsed.len());
            let mut i = 0;
            for_each_text(NAME, lists, |t| {
                let v = parsed.get(i).copied().flatten();
                i += 1;
                match (v, t) {
                    (Some(v), Some(text)) if parse_cidr_list(text, &mut ranges).is_ok() => {
                        out.append_value(ranges.iter().any(|r| r.contains(v)))
                    }
                    _ => out.append_null(),
                }
            })?;
            Ok(boolean(out))
        }
    }
}

fn family(ip: u128) -> i32 {
    if as_v4(ip).is_some() { 4 } else { 6 }
}

fn ip_family(ip: &ColumnarValue, rows: usize) -> DfResult<ColumnarValue> {
    const NAME: &str = "ip_family";
    if let ColumnarValue::Scalar(s) = ip {
        let v = scalar_text(NAME, s)?.and_then(parse_ip);
        return Ok(ColumnarValue::Scalar(ScalarValue::Int32(v.map(family))));
    }
    let ips = ip.to_array(rows)?;
    let mut out = Int32Builder::with_capacity(ips.len());
    for_each_text(NAME, &ips, |t| {
        out.append_option(t.and_then(parse_ip).map(family))
    })?;
    Ok(ColumnarValue::Array(Arc::new(out.finish())))
}

/// `ip`'s network with `prefix` bits of its own family, or `None` when the prefix does not
/// fit the family.
fn network_of(ip: u128, prefix: i64) -> Option<(u128, u8)> {
    let (bits, max) = match as_v4(ip) {
        Some(_) => (96 + prefix, 32),
        None => (prefix, 128),
    };
    if !(0..=max).contains(&prefix) {
        return None;
    }
    Some((ip & mask_of(bits as u32), prefix as u8))
}

fn cidr_network(
    ip: &ColumnarValue,
    prefix: &ColumnarValue,
    rows: usize,
) -> DfResult<ColumnarValue> {
    const NAME: &str = "cidr_network";
    let ips = ip.to_array(rows)?;
    let prefixes: Option<Int64Array> = match prefix {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(p))) => {
            if !(0..=128).contains(p) {
                return exec_err!("{}", bad_prefix(NAME, *p));
            }
            None
        }
        ColumnarValue::Scalar(ScalarValue::Int64(None) | ScalarValue::Null) => {
            return Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)));
        }
        ColumnarValue::Scalar(other) => {
            return exec_err!(
                "{NAME}: prefix must be an integer, got {}",
                other.data_type()
            );
        }
        ColumnarValue::Array(a) => {
            Some(a.as_primitive_opt::<Int64Type>().cloned().ok_or_else(|| {
                datafusion::error::DataFusionError::Execution(format!(
                    "{NAME}: prefix must be an integer, got {}",
                    a.data_type()
                ))
            })?)
        }
    };
    let constant = match prefix {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(p))) => *p,
        _ => 0,
    };
    let mut out = StringBuilder::with_capacity(ips.len(), ips.len() * 16);
    let mut text = Vec::with_capacity(48);
    let mut i = 0;
    for_each_text(NAME, &ips, |t| {
        let p = match &prefixes {
            Some(a) => a.is_valid(i).then(|| a.value(i)),
            None => Some(constant),
        };
        i += 1;
        match t
            .and_then(parse_ip)
            .zip(p)
            .and_then(|(v, p)| network_of(v, p))
        {
            Some((net, p)) => {
                text.clear();
                push_ip_text(&mut text, net);
                let _ = write!(text, "/{p}");
                out.append_value(std::str::from_utf8(&text).unwrap_or_default());
            }
            None => out.append_null(),
        }
    })?;
    let result: ArrayRef = Arc::new(out.finish());
    if matches!(ip, ColumnarValue::Scalar(_)) {
        return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
            &result, 0,
        )?));
    }
    Ok(ColumnarValue::Array(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Int32Array, RecordBatch, StringArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::prelude::SessionContext;

    /// A session with the functions and a table `t(ip, cidr)` of `rows`.
    fn session(rows: &[(Option<&str>, Option<&str>)]) -> SessionContext {
        let ctx = SessionContext::new();
        crate::functions::register(&ctx);
        let schema = Arc::new(Schema::new(vec![
            Field::new("ip", DataType::Utf8, true),
            Field::new("cidr", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap();
        ctx.register_batch("t", batch).unwrap();
        ctx
    }

    async fn column(ctx: &SessionContext, sql: &str) -> ArrayRef {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        arrow::compute::concat(
            &batches
                .iter()
                .map(|b| b.column(0).as_ref())
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    async fn error(ctx: &SessionContext, sql: &str) -> String {
        match ctx.sql(sql).await {
            Err(e) => e.to_string(),
            Ok(df) => df.collect().await.expect_err(sql).to_string(),
        }
    }

    fn bools(a: &ArrayRef) -> Vec<Option<bool>> {
        a.as_any()
            .downcast_ref::<BooleanArray>()
            .unwrap()
            .iter()
            .collect()
    }

    const ROWS: &[(Option<&str>, Option<&str>)] = &[
        (Some("10.4.3.7"), Some("10.4.0.0/16")),
        (Some("10.5.0.1"), Some("10.4.0.0/16")),
        (Some("2001:db8::1"), Some("2001:db8::/32")),
        (Some("2001:db9::1"), Some("10.0.0.0/8")),
        (Some("not an ip"), Some("10.0.0.0/8")),
        (None, Some("10.0.0.0/8")),
        (Some("10.0.0.1"), Some("10.0.0.0/33")),
        (Some("10.0.0.1"), None),
    ];

    #[tokio::test]
    async fn cidr_contains_a_constant_range_matches_per_family_and_nulls_bad_addresses() {
        let ctx = session(ROWS);
        let got = column(&ctx, "SELECT cidr_contains('10.0.0.0/8', ip) FROM t").await;
        assert_eq!(
            bools(&got),
            vec![
                Some(true),
                Some(true),
                Some(false),
                Some(false),
                None,
                None,
                Some(true),
                Some(true)
            ]
        );
        let got = column(&ctx, "SELECT cidr_contains('2001:db8::/32', ip) FROM t").await;
        assert_eq!(
            &bools(&got)[..4],
            &[Some(false), Some(false), Some(true), Some(false)]
        );
    }

    #[tokio::test]
    async fn cidr_contains_per_row_ranges_null_where_the_range_is_malformed() {
        let ctx = session(ROWS);
        let got = column(&ctx, "SELECT cidr_contains(cidr, ip) FROM t").await;
        assert_eq!(
            bools(&got),
            vec![
                Some(true),
                Some(false),
                Some(true),
                Some(false),
                None,
                None,
                None,
                None
            ]
        );
    }

    #[tokio::test]
    async fn a_malformed_constant_range_is_an_error_that_names_it() {
        let ctx = session(ROWS);
        let e = error(&ctx, "SELECT cidr_contains('10.0.0.0/40', ip) FROM t").await;
        assert!(e.contains("\"10.0.0.0/40\" is not a CIDR range"), "{e}");
        let e = error(&ctx, "SELECT ip_in_cidrs(ip, '10.0.0.0/8, bogus') FROM t").await;
        assert!(e.contains("\"bogus\""), "{e}");
        let e = error(&ctx, "SELECT cidr_network(ip, 200) FROM t").await;
        assert!(e.contains("prefix 200"), "{e}");
        let e = error(&ctx, "SELECT cidr_contains(1, ip) FROM t").await;
        assert!(e.contains("cidr must be text"), "{e}");
        let e = error(&ctx, "SELECT ip_family(ip, ip) FROM t").await;
        assert!(e.contains("takes 1 arguments"), "{e}");
    }

    #[tokio::test]
    async fn ip_in_cidrs_matches_any_range_of_the_list() {
        let ctx = session(ROWS);
        let got = column(
            &ctx,
            "SELECT ip_in_cidrs(ip, '192.168.0.0/16, 10.4.0.0/16,2001:db8::/32,') FROM t",
        )
        .await;
        assert_eq!(
            &bools(&got)[..6],
            &[Some(true), Some(false), Some(true), Some(false), None, None]
        );
        let got = column(&ctx, "SELECT ip_in_cidrs(ip, '') FROM t").await;
        assert_eq!(bools(&got)[0], Some(false), "an empty list matches nothing");
        let got = column(&ctx, "SELECT ip_in_cidrs(ip, cidr) FROM t").await;
        assert_eq!(&bools(&got)[..3], &[Some(true), Some(false), Some(true)]);
        assert_eq!(bools(&got)[6], None, "a per-row list that does not parse");
    }

    #[tokio::test]
    async fn ip_family_says_4_or_6_and_family_is_its_postgresql_name() {
        let ctx = session(ROWS);
        let got = column(&ctx, "SELECT family(ip) FROM t").await;
        let got: Vec<Option<i32>> = got
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(&got[..6], &[Some(4), Some(4), Some(6), Some(6), None, None]);
        let got = column(
            &ctx,
            "SELECT ip_family('::1') = 6 AND ip_family(NULL) IS NULL",
        )
        .await;
        assert_eq!(bools(&got), vec![Some(true)]);
    }

    #[tokio::test]
    async fn cidr_network_groups_addresses_by_prefix_of_their_family() {
        let ctx = session(ROWS);
        let got = column(&ctx, "SELECT cidr_network(ip, 24) FROM t").await;
        let got: Vec<Option<&str>> = got.as_string::<i32>().iter().collect();
        assert_eq!(
            &got[..6],
            &[
                Some("10.4.3.0/24"),
                Some("10.5.0.0/24"),
                Some("2001:d00::/24"),
                Some("2001:d00::/24"),
                None,
                None
            ]
        );
        let got = column(
            &ctx,
            "SELECT cidr_network('2001:db8:1:2::5', 64) || ' ' || cidr_network('10.1.2.3', 0) || ' ' || cidr_network('10.1.2.3', 32)",
        )
        .await;
        assert_eq!(
            got.as_string::<i32>().value(0),
            "2001:db8:1:2::/64 0.0.0.0/0 10.1.2.3/32"
        );
        let got = column(&ctx, "SELECT cidr_network('10.1.2.3', 48)").await;
        assert!(
            got.is_null(0),
            "a prefix longer than IPv4 has is null for IPv4"
        );
        let got = column(
            &ctx,
            "SELECT cidr_network(ip, 16) FROM t GROUP BY 1 ORDER BY 1 NULLS LAST",
        )
        .await;
        let groups: Vec<Option<&str>> = got.as_string::<i32>().iter().collect();
        assert_eq!(
            groups,
            vec![
                Some("10.0.0.0/16"),
                Some("10.4.0.0/16"),
                Some("10.5.0.0/16"),
                Some("2001::/16"),
                None
            ]
        );
    }

    #[test]
    fn cidr_parsing_accepts_single_addresses_and_ignores_host_bits() {
        let one = Cidr::parse(" 10.0.0.5 ").unwrap();
        assert!(one.contains(parse_ip("10.0.0.5").unwrap()));
        assert!(!one.contains(parse_ip("10.0.0.6").unwrap()));
        let r = Cidr::parse("10.9.9.9/8").unwrap();
        assert!(r.contains(parse_ip("10.200.0.1").unwrap()));
        assert!(
            Cidr::parse("::/0")
                .unwrap()
                .contains(parse_ip("10.0.0.1").unwrap())
        );
        assert!(
            !Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains(parse_ip("::1").unwrap())
        );
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/x",
            "10.0.0/8",
            "::/129",
            "10.0.0.0/-1",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad:?}");
        }
    }
}
