//! The `#[serializable_retry]` attribute. Use it through the
//! [`sqlx-retry`](https://docs.rs/sqlx-retry) crate, which documents it in full.

mod attr;
mod expand;

use proc_macro::TokenStream;

/// Runs an async function's body in a transaction and retries the whole body on serialization
/// failures and deadlocks. See the `sqlx-retry` crate for the arguments and semantics.
#[proc_macro_attribute]
pub fn serializable_retry(args: TokenStream, item: TokenStream) -> TokenStream {
    let untouched = proc_macro2::TokenStream::from(item.clone());
    let result = syn::parse::<attr::Args>(args).and_then(|args| {
        let item = syn::parse::<syn::ItemFn>(item)?;
        expand::expand(&args, item)
    });
    match result {
        Ok(tokens) => tokens.into(),
        // One mistake, one error: keep the function as written so the rest of the crate still
        // type-checks against it.
        Err(err) => {
            let err = err.to_compile_error();
            quote::quote!(#err #untouched).into()
        }
    }
}
