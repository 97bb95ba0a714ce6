//! The upstream operations the sandbox serves, by the names fault rules and counters use.

/// Fault rules and counters are keyed by these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    JuspayWalletUpdate,
    JuspayWalletGet,
    JuspayCustomerUpdate,
    JuspayCustomerGet,
    JuspayCustomerWallets,
    RazorpayUpiUpdate,
    RazorpayUpiGet,
}

impl Route {
    pub const ALL: [Route; 7] = [
        Route::JuspayWalletUpdate,
        Route::JuspayWalletGet,
        Route::JuspayCustomerUpdate,
        Route::JuspayCustomerGet,
        Route::JuspayCustomerWallets,
        Route::RazorpayUpiUpdate,
        Route::RazorpayUpiGet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Route::JuspayWalletUpdate => "juspay_wallet_update",
            Route::JuspayWalletGet => "juspay_wallet_get",
            Route::JuspayCustomerUpdate => "juspay_customer_update",
            Route::JuspayCustomerGet => "juspay_customer_get",
            Route::JuspayCustomerWallets => "juspay_customer_wallets",
            Route::RazorpayUpiUpdate => "razorpay_upi_update",
            Route::RazorpayUpiGet => "razorpay_upi_get",
        }
    }

    pub fn from_name(name: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.name() == name)
    }
}
