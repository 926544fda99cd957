//! Kubernetes `Quantity` strings for metric values.
//!
//! The HPA reads every custom metric with `Quantity.MilliValue()`, so values are kept at milli
//! precision (truncated toward zero, as prometheus-adapter does) and written in the canonical
//! DecimalSI form that apimachinery itself produces: `1500m`, `2`, `2500`, `3k`, `1200k`.
//! Emitting the canonical form matters because clients compare and display these strings.

use std::fmt;

/// A metric value in milli-units, written as a canonical DecimalSI quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity {
    milli: i64,
}

impl Quantity {
    /// The quantity for a Prometheus sample, or `None` for NaN and ±Inf: those are not numbers
    /// the HPA can act on, and reporting them as `0` (prometheus-adapter's choice for NaN) would
    /// make it scale down on a broken query.
    pub fn from_f64(value: f64) -> Option<Self> {
        if !value.is_finite() {
            return None;
        }
        let milli = (value * 1000.0).trunc();
        // `as` saturates, which is what a value beyond ±9.2e15 should do.
        #[allow(clippy::cast_possible_truncation, reason = "saturating on purpose")]
        Some(Self {
            milli: milli as i64,
        })
    }

    /// The quantity for an exact number of milli-units.
    pub const fn from_milli(milli: i64) -> Self {
        Self { milli }
    }

    /// The value in milli-units, as the HPA reads it.
    pub const fn milli(self) -> i64 {
        self.milli
    }
}

/// SI suffixes by power of ten, from milli to exa (the range an `i64` of milli-units spans).
const SUFFIXES: [(i32, &str); 8] = [
    (-3, "m"),
    (0, ""),
    (3, "k"),
    (6, "M"),
    (9, "G"),
    (12, "T"),
    (15, "P"),
    (18, "E"),
];

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.milli == 0 {
            return f.write_str("0");
        }
        // Canonical form: drop trailing decimal zeros, then lower the exponent to a multiple of
        // three by growing the mantissa (apimachinery's `AsCanonicalBytes`).
        let mut mantissa = i128::from(self.milli);
        let mut exponent = -3_i32;
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exponent += 1;
        }
        while exponent.rem_euclid(3) != 0 {
            mantissa *= 10;
            exponent -= 1;
        }
        let suffix = SUFFIXES
            .iter()
            .find(|(power, _)| *power == exponent)
            .map_or("", |(_, suffix)| suffix);
        write!(f, "{mantissa}{suffix}")
    }
}

impl serde::Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_strings() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.5, "1500m"),
            (2.0, "2"),
            (2500.0, "2500"),
            (3000.0, "3k"),
            (0.016, "16m"),
            (1.2e6, "1200k"),
            (1e6, "1M"),
            (0.1, "100m"),
            (10.5, "10500m"),
            (123.456, "123456m"),
            (-1.5, "-1500m"),
            (-3000.0, "-3k"),
            (0.0004, "0"),
            (0.0019, "1m"),
            (-0.0019, "-1m"),
            (4.2e12, "4200G"),
            (5e15, "5P"),
            (1e20, "9223372036854775807m"),
        ];
        for (value, expected) in cases {
            let quantity = Quantity::from_f64(*value).expect("finite");
            assert_eq!(quantity.to_string(), *expected, "value {value}");
        }
    }

    #[test]
    fn milli_values_round_trip() {
        for milli in [
            1,
            999,
            1000,
            1001,
            10_000,
            1_000_000_000,
            i64::MAX,
            i64::MIN,
        ] {
            let text = Quantity::from_milli(milli).to_string();
            let (digits, scale) = match text.strip_suffix('m') {
                Some(digits) => (digits, 1_i128),
                None => match text.strip_suffix('k') {
                    Some(digits) => (digits, 1_000_000),
                    None => match text.strip_suffix('M') {
                        Some(digits) => (digits, 1_000_000_000),
                        None => (text.as_str(), 1_000),
                    },
                },
            };
            let parsed = digits.parse::<i128>().expect("integer mantissa") * scale;
            assert_eq!(parsed, i128::from(milli), "{text}");
        }
    }

    #[test]
    fn non_finite_values_are_refused() {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(Quantity::from_f64(value), None);
        }
    }
}
