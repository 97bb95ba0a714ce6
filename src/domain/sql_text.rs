//! Domain values stored as `text`: they encode as their name and decode through their parser, so
//! a row holding a value this build does not know fails to decode instead of becoming a default.

/// Implements sqlx's `Type`, `Encode` and `Decode` for `$t` as PostgreSQL `text`, with
/// `$name(&self) -> &str` to encode and `$parse(&str) -> Option<Self>` to decode.
macro_rules! text_type {
    ($t:ty, $name:expr, $parse:expr, $what:literal) => {
        impl sqlx::Type<sqlx::Postgres> for $t {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::postgres::PgHasArrayType for $t {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $t {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                let parse: fn(&str) -> Option<$t> = $parse;
                parse(s)
                    .ok_or_else(|| format!(concat!("unknown ", $what, " {:?} in a row"), s).into())
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $t {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                let name: fn(&$t) -> &str = $name;
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(name(self), buf)
            }
        }
    };
}

pub(crate) use text_type;
