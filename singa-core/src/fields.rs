//! Layer and updater settings: typed values, their schema, and validation.
//!
//! Every layer type declares its fields as a list of [`FieldSpec`]s. The runtime checks what a
//! job file (or the builder API) gives against that list — unknown names (with the nearest valid
//! one suggested), wrong types, missing required values — and fills in defaults, so a layer's
//! constructor receives complete, well-typed [`Fields`]. The same schema prints the help of
//! `singa layers`.

use crate::error::{Error, Result};
use abi_stable::std_types::{ROption, RString, RVec, Tuple2};
use abi_stable::StableAbi;
use std::fmt;

/// A setting's value.
#[repr(u8)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub enum FieldValue {
    /// `true` or `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(RString),
    /// A list of values.
    List(RVec<FieldValue>),
    /// A nested table.
    Table(Fields),
}

impl FieldValue {
    /// The kind of this value.
    pub fn kind(&self) -> FieldKind {
        match self {
            FieldValue::Bool(_) => FieldKind::Bool,
            FieldValue::Int(_) => FieldKind::Int,
            FieldValue::Float(_) => FieldKind::Float,
            FieldValue::Str(_) => FieldKind::Str,
            FieldValue::List(_) => FieldKind::List,
            FieldValue::Table(_) => FieldKind::Table,
        }
    }
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Bool(b) => write!(f, "{b}"),
            FieldValue::Int(i) => write!(f, "{i}"),
            FieldValue::Float(x) => write!(f, "{x}"),
            FieldValue::Str(s) => write!(f, "{:?}", s.as_str()),
            FieldValue::List(l) => {
                f.write_str("[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            FieldValue::Table(t) => write!(f, "{t}"),
        }
    }
}

impl From<bool> for FieldValue {
    fn from(v: bool) -> Self {
        FieldValue::Bool(v)
    }
}
impl From<i64> for FieldValue {
    fn from(v: i64) -> Self {
        FieldValue::Int(v)
    }
}
impl From<i32> for FieldValue {
    fn from(v: i32) -> Self {
        FieldValue::Int(v.into())
    }
}
impl From<usize> for FieldValue {
    fn from(v: usize) -> Self {
        FieldValue::Int(v as i64)
    }
}
impl From<f64> for FieldValue {
    fn from(v: f64) -> Self {
        FieldValue::Float(v)
    }
}
impl From<f32> for FieldValue {
    fn from(v: f32) -> Self {
        FieldValue::Float(v.into())
    }
}
impl From<&str> for FieldValue {
    fn from(v: &str) -> Self {
        FieldValue::Str(v.into())
    }
}
impl From<String> for FieldValue {
    fn from(v: String) -> Self {
        FieldValue::Str(v.into())
    }
}
impl From<Fields> for FieldValue {
    fn from(v: Fields) -> Self {
        FieldValue::Table(v)
    }
}
impl<T: Into<FieldValue>> From<Vec<T>> for FieldValue {
    fn from(v: Vec<T>) -> Self {
        FieldValue::List(v.into_iter().map(Into::into).collect())
    }
}

/// The type a field expects.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// `true` / `false`.
    Bool,
    /// An integer.
    Int,
    /// A number (integers are accepted).
    Float,
    /// A string.
    Str,
    /// A list (a single number is taken as a list of one).
    List,
    /// A table.
    Table,
}

impl FieldKind {
    /// How the kind reads in messages: "an integer", "a number", ...
    pub fn describe(self) -> &'static str {
        match self {
            FieldKind::Bool => "a boolean",
            FieldKind::Int => "an integer",
            FieldKind::Float => "a number",
            FieldKind::Str => "a string",
            FieldKind::List => "a list",
            FieldKind::Table => "a table",
        }
    }
}

/// Named values, kept in insertion order; two sets are equal when they hold the same names
/// with the same values, in any order.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, Default)]
pub struct Fields {
    entries: RVec<Tuple2<RString, FieldValue>>,
}

impl PartialEq for Fields {
    fn eq(&self, other: &Fields) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Fields {
    /// No fields.
    pub fn new() -> Fields {
        Fields::default()
    }

    /// Sets `name` (replacing an earlier value) and returns `self`, for chaining.
    pub fn with(mut self, name: &str, value: impl Into<FieldValue>) -> Fields {
        self.set(name, value);
        self
    }

    /// Sets `name`, replacing an earlier value.
    pub fn set(&mut self, name: &str, value: impl Into<FieldValue>) {
        let value = value.into();
        match self.entries.iter_mut().find(|e| e.0 == name) {
            Some(e) => e.1 = value,
            None => self.entries.push(Tuple2(name.into(), value)),
        }
    }

    /// Removes `name` and returns its value, if it was set.
    pub fn remove(&mut self, name: &str) -> Option<FieldValue> {
        let at = self.entries.iter().position(|e| e.0 == name)?;
        Some(self.entries.remove(at).1)
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.entries.iter().find(|e| e.0 == name).map(|e| &e.1)
    }

    /// The names and values, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.entries.iter().map(|e| (e.0.as_str(), &e.1))
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn missing(name: &str) -> Error {
        Error::invalid(format!("field `{name}` is not set"))
    }

    fn wrong(name: &str, want: FieldKind, got: &FieldValue) -> Error {
        Error::invalid(format!(
            "field `{name}` should be {}, got {got}",
            want.describe()
        ))
    }

    /// An optional number (an integer is accepted).
    pub fn opt_f64(&self, name: &str) -> Result<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(FieldValue::Float(x)) => Ok(Some(*x)),
            Some(FieldValue::Int(i)) => Ok(Some(*i as f64)),
            Some(v) => Err(Self::wrong(name, FieldKind::Float, v)),
        }
    }

    /// A number.
    pub fn f64(&self, name: &str) -> Result<f64> {
        self.opt_f64(name)?.ok_or_else(|| Self::missing(name))
    }

    /// A number, as `f32`.
    pub fn f32(&self, name: &str) -> Result<f32> {
        Ok(self.f64(name)? as f32)
    }

    /// An optional integer.
    pub fn opt_i64(&self, name: &str) -> Result<Option<i64>> {
        match self.get(name) {
            None => Ok(None),
            Some(FieldValue::Int(i)) => Ok(Some(*i)),
            Some(v) => Err(Self::wrong(name, FieldKind::Int, v)),
        }
    }

    /// An integer.
    pub fn i64(&self, name: &str) -> Result<i64> {
        self.opt_i64(name)?.ok_or_else(|| Self::missing(name))
    }

    /// A non-negative integer.
    pub fn usize(&self, name: &str) -> Result<usize> {
        let i = self.i64(name)?;
        usize::try_from(i)
            .map_err(|_| Error::invalid(format!("field `{name}` must not be negative, got {i}")))
    }

    /// An optional boolean.
    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(FieldValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(Self::wrong(name, FieldKind::Bool, v)),
        }
    }

    /// A boolean.
    pub fn bool(&self, name: &str) -> Result<bool> {
        self.opt_bool(name)?.ok_or_else(|| Self::missing(name))
    }

    /// An optional string.
    pub fn opt_str(&self, name: &str) -> Result<Option<&str>> {
        match self.get(name) {
            None => Ok(None),
            Some(FieldValue::Str(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(Self::wrong(name, FieldKind::Str, v)),
        }
    }

    /// A string.
    pub fn str(&self, name: &str) -> Result<&str> {
        self.opt_str(name)?.ok_or_else(|| Self::missing(name))
    }

    /// An optional nested table.
    pub fn opt_table(&self, name: &str) -> Result<Option<&Fields>> {
        match self.get(name) {
            None => Ok(None),
            Some(FieldValue::Table(t)) => Ok(Some(t)),
            Some(v) => Err(Self::wrong(name, FieldKind::Table, v)),
        }
    }

    /// An optional list.
    pub fn opt_list(&self, name: &str) -> Result<Option<&[FieldValue]>> {
        match self.get(name) {
            None => Ok(None),
            Some(FieldValue::List(l)) => Ok(Some(l.as_slice())),
            Some(v) => Err(Self::wrong(name, FieldKind::List, v)),
        }
    }
}

impl fmt::Display for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{ ")?;
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k} = {v}")?;
        }
        f.write_str(" }")
    }
}

/// One field of a layer's or updater's schema.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct FieldSpec {
    /// The name in the job file.
    pub name: RString,
    /// The expected type.
    pub kind: FieldKind,
    /// Whether the field must be given.
    pub required: bool,
    /// The value used when the field is not given.
    pub default: ROption<FieldValue>,
    /// For strings: the allowed values (empty: any).
    pub choices: RVec<RString>,
    /// One line of help.
    pub doc: RString,
}

impl FieldSpec {
    /// An optional field without default.
    pub fn new(name: &str, kind: FieldKind, doc: &str) -> FieldSpec {
        FieldSpec {
            name: name.into(),
            kind,
            required: false,
            default: ROption::RNone,
            choices: RVec::new(),
            doc: doc.into(),
        }
    }

    /// Marks the field as required.
    pub fn required(mut self) -> FieldSpec {
        self.required = true;
        self
    }

    /// Gives the field a default value.
    pub fn default(mut self, value: impl Into<FieldValue>) -> FieldSpec {
        self.default = ROption::RSome(value.into());
        self
    }

    /// Restricts a string field to these values.
    pub fn choices(mut self, choices: &[&str]) -> FieldSpec {
        self.choices = choices.iter().map(|c| RString::from(*c)).collect();
        self
    }
}

/// Why a set of fields does not match its schema: the field and the message.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    /// The offending field's name.
    pub field: String,
    /// What is wrong, written for the user.
    pub message: String,
}

/// The first number of `v` (or of its list) that is NaN or infinite: no field of a job means
/// such a value.
fn first_nonfinite(v: &FieldValue) -> Option<f64> {
    match v {
        FieldValue::Float(x) if !x.is_finite() => Some(*x),
        FieldValue::List(items) => items.iter().find_map(first_nonfinite),
        FieldValue::Table(t) => t.iter().find_map(|(_, v)| first_nonfinite(v)),
        _ => None,
    }
}

/// Checks `given` against `specs`: rejects unknown names (suggesting the nearest valid one),
/// missing required fields, wrong types, numbers that are not finite and values outside
/// `choices`; fills in defaults;
/// converts integers given for number fields. Returns the complete fields.
pub fn validate_fields(
    specs: &[FieldSpec],
    given: &Fields,
) -> std::result::Result<Fields, FieldError> {
    let mut out = Fields::new();
    for (name, value) in given.iter() {
        let Some(spec) = specs.iter().find(|s| s.name == name) else {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            let message = match nearest(name, &names) {
                Some(n) => format!("unknown field; did you mean `{n}`?"),
                None if names.is_empty() => "unknown field; this type takes no fields".to_string(),
                None => format!("unknown field; valid fields are {}", names.join(", ")),
            };
            return Err(FieldError {
                field: name.to_string(),
                message,
            });
        };
        let value = match (spec.kind, value) {
            (FieldKind::Float, FieldValue::Int(i)) => FieldValue::Float(*i as f64),
            // `mean = 0.5` for `mean = [0.5]`: one value stands for a list of one.
            (FieldKind::List, v @ (FieldValue::Int(_) | FieldValue::Float(_))) => {
                FieldValue::List(vec![v.clone()].into())
            }
            (k, v) if v.kind() == k => v.clone(),
            (k, v) => {
                return Err(FieldError {
                    field: name.to_string(),
                    message: format!("expected {}, got {v}", k.describe()),
                })
            }
        };
        if let Some(x) = first_nonfinite(&value) {
            return Err(FieldError {
                field: name.to_string(),
                message: format!("expected a finite number, got {x}"),
            });
        }
        if let FieldValue::Str(s) = &value {
            if !spec.choices.is_empty() && !spec.choices.iter().any(|c| c == s) {
                let choices: Vec<&str> = spec.choices.iter().map(|c| c.as_str()).collect();
                let hint = nearest(s, &choices)
                    .map(|n| format!("; did you mean {n:?}?"))
                    .unwrap_or_default();
                return Err(FieldError {
                    field: name.to_string(),
                    message: format!("{s:?} is not one of {}{hint}", choices.join(", ")),
                });
            }
        }
        out.set(name, value);
    }
    for spec in specs {
        if out.get(&spec.name).is_some() {
            continue;
        }
        if let ROption::RSome(d) = &spec.default {
            out.set(&spec.name, d.clone());
        } else if spec.required {
            return Err(FieldError {
                field: spec.name.to_string(),
                message: format!("missing; expected {} ({})", spec.kind.describe(), spec.doc),
            });
        }
    }
    Ok(out)
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo.
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance between two strings (by characters).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<FieldSpec> {
        vec![
            FieldSpec::new("num_output", FieldKind::Int, "output units").required(),
            FieldSpec::new("bias_term", FieldKind::Bool, "add a bias").default(true),
            FieldSpec::new("slope", FieldKind::Float, "negative slope").default(0.0),
            FieldSpec::new("mode", FieldKind::Str, "mode").choices(&["max", "avg"]),
        ]
    }

    #[test]
    fn defaults_and_conversion() {
        let f = validate_fields(
            &specs(),
            &Fields::new().with("num_output", 10).with("slope", 1),
        )
        .unwrap();
        assert_eq!(f.usize("num_output").unwrap(), 10);
        assert!(f.bool("bias_term").unwrap());
        assert_eq!(f.f64("slope").unwrap(), 1.0);
        assert_eq!(f.opt_str("mode").unwrap(), None);
    }

    #[test]
    fn typo_gets_a_suggestion() {
        let e = validate_fields(&specs(), &Fields::new().with("num_ouptut", 10)).unwrap_err();
        assert_eq!(e.field, "num_ouptut");
        assert_eq!(e.message, "unknown field; did you mean `num_output`?");
    }

    #[test]
    fn wrong_type_missing_and_choices() {
        let e = validate_fields(&specs(), &Fields::new().with("num_output", "ten")).unwrap_err();
        assert_eq!(e.message, "expected an integer, got \"ten\"");
        let e = validate_fields(&specs(), &Fields::new()).unwrap_err();
        assert_eq!(e.field, "num_output");
        assert!(e.message.starts_with("missing; expected an integer"));
        let e = validate_fields(
            &specs(),
            &Fields::new().with("num_output", 1).with("mode", "mx"),
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "\"mx\" is not one of max, avg; did you mean \"max\"?"
        );
    }

    #[test]
    fn equality_ignores_order() {
        let a = Fields::new().with("x", 1).with("y", "s");
        let b = Fields::new().with("y", "s").with("x", 1);
        assert_eq!(a, b);
        assert_ne!(a, b.clone().with("x", 2));
        assert_ne!(a, b.with("z", true));
    }

    #[test]
    fn distances() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(nearest("relu", &["relu", "tanh"]), Some("relu"));
        assert_eq!(nearest("zzzzzz", &["relu", "tanh"]), None);
    }
}
