//! Payment permission on the org's shared prepaid balance: may the member pay
//! from it, and the per-transaction, daily and monthly limits (integers in
//! minor units of the org's currency).
use serde::{Deserialize, Serialize};

use super::ids::Invalid;

/// Payment limits in minor units: each >= 0, `per_tx <= daily <= monthly`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentSettings {
    /// May the member pay from the shared prepaid balance at all.
    pub allowed: bool,
    /// Largest single payment.
    #[schema(minimum = 0)]
    pub per_tx: i64,
    /// Most spent in one calendar day of the org's time zone.
    #[schema(minimum = 0)]
    pub daily: i64,
    /// Most spent in one calendar month of the org's time zone.
    #[schema(minimum = 0)]
    pub monthly: i64,
}

impl PaymentSettings {
    /// Payment not allowed, every limit zero.
    pub const NONE: PaymentSettings = PaymentSettings {
        allowed: false,
        per_tx: 0,
        daily: 0,
        monthly: 0,
    };

    /// Each limit >= 0 and `per_tx <= daily <= monthly`. The error names the
    /// field (`per_tx`, `daily` or `monthly`); callers add their own prefix
    /// (`payment.` in a role).
    pub fn validate(&self) -> Result<(), Invalid> {
        for (field, v) in [
            ("per_tx", self.per_tx),
            ("daily", self.daily),
            ("monthly", self.monthly),
        ] {
            if v < 0 {
                return Err(Invalid::new(
                    field,
                    format!("must be 0 or more (minor units), got {v}"),
                ));
            }
        }
        if self.per_tx > self.daily {
            return Err(Invalid::new(
                "per_tx",
                format!(
                    "{} is above the daily limit {}; per_tx <= daily <= monthly",
                    self.per_tx, self.daily
                ),
            ));
        }
        if self.daily > self.monthly {
            return Err(Invalid::new(
                "daily",
                format!(
                    "{} is above the monthly limit {}; per_tx <= daily <= monthly",
                    self.daily, self.monthly
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(per_tx: i64, daily: i64, monthly: i64) -> PaymentSettings {
        PaymentSettings {
            allowed: true,
            per_tx,
            daily,
            monthly,
        }
    }

    #[test]
    fn limits_are_ordered_and_not_negative() {
        assert!(p(0, 0, 0).validate().is_ok());
        assert!(p(10, 10, 10).validate().is_ok());
        assert!(p(1, 2, 3).validate().is_ok());
        assert_eq!(p(-1, 2, 3).validate().unwrap_err().field, "per_tx");
        assert_eq!(p(1, -2, 3).validate().unwrap_err().field, "daily");
        assert_eq!(p(1, 2, -3).validate().unwrap_err().field, "monthly");
        assert_eq!(p(3, 2, 3).validate().unwrap_err().field, "per_tx");
        assert_eq!(p(1, 4, 3).validate().unwrap_err().field, "daily");
    }

    #[test]
    fn json_refuses_fractions_and_unknown_fields() {
        let ok: PaymentSettings =
            serde_json::from_str(r#"{"allowed":true,"per_tx":1,"daily":2,"monthly":3}"#).unwrap();
        assert_eq!(ok, p(1, 2, 3));
        assert!(
            serde_json::from_str::<PaymentSettings>(
                r#"{"allowed":true,"per_tx":1.5,"daily":2,"monthly":3}"#
            )
            .is_err()
        );
        assert!(
            serde_json::from_str::<PaymentSettings>(
                r#"{"allowed":true,"per_tx":"1","daily":2,"monthly":3}"#
            )
            .is_err()
        );
        assert!(
            serde_json::from_str::<PaymentSettings>(
                r#"{"allowed":true,"per_tx":1,"daily":2,"monthly":3,"weekly":4}"#
            )
            .is_err()
        );
    }
}
