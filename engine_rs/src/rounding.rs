//! Rounding of `amount * bp / 10_000` products to whole fen, by the policy's named mode.

use serde::{Deserialize, Serialize};

/// Basis points in one whole (100 %).
pub const BP: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoundMode {
    /// 四舍五入: halves go up.
    #[default]
    HalfUp,
    /// Banker's rounding: halves go to the even fen.
    HalfEven,
    /// Truncate toward zero (the fund never pays a fraction it did not owe).
    Down,
    /// Any fraction goes up.
    Up,
}

/// `num / den` for `num >= 0`, `den > 0`, rounded by `mode`.
#[inline]
pub fn round_div(num: i128, den: i128, mode: RoundMode) -> i128 {
    debug_assert!(num >= 0 && den > 0);
    let q = num / den;
    let r = num % den;
    if r == 0 {
        return q;
    }
    match mode {
        RoundMode::Down => q,
        RoundMode::Up => q + 1,
        RoundMode::HalfUp => {
            if 2 * r >= den {
                q + 1
            } else {
                q
            }
        }
        RoundMode::HalfEven => {
            if 2 * r > den || (2 * r == den && q % 2 == 1) {
                q + 1
            } else {
                q
            }
        }
    }
}

/// `amount * bp / 10_000` rounded; `amount >= 0`, `0 <= bp <= 10_000`, so the result fits.
#[inline]
pub fn apply_bp(amount: i64, bp: i64, mode: RoundMode) -> i64 {
    round_div(i128::from(amount) * i128::from(bp), i128::from(BP), mode) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(round_div(25, 10, RoundMode::HalfUp), 3);
        assert_eq!(round_div(25, 10, RoundMode::HalfEven), 2);
        assert_eq!(round_div(35, 10, RoundMode::HalfEven), 4);
        assert_eq!(round_div(24, 10, RoundMode::Up), 3);
        assert_eq!(round_div(29, 10, RoundMode::Down), 2);
        assert_eq!(round_div(30, 10, RoundMode::Up), 3);
        assert_eq!(apply_bp(1, 5000, RoundMode::HalfUp), 1);
        assert_eq!(apply_bp(i64::MAX, 10_000, RoundMode::HalfUp), i64::MAX);
    }
}
