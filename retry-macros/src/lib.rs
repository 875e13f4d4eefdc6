//! The `#[serializable_retry]` attribute. Use it through the
//! [`sqlx-retry`](https://docs.rs/sqlx-retry) crate, which documents it in full.

mod attr;
mod expand;

use proc_macro::TokenStream;

/// Runs an async function's body in a transaction and retries the whole body on serialization
/// failures and deadlocks. See the `sqlx-retry` crate for the arguments and semantics.
#[proc_macro_attribute]
pub fn serializable_retry(args: TokenStream, item: TokenStream) -> TokenStream {
    // One mistake, one error: a wrong argument is reported and the function is still expanded,
    // with the defaults, so that callers type-check against the signature they will get.
    let (config, arg_error) = attr::parse(args.into());
    let mut errors = expand::Errors::default();
    errors.extend(arg_error);
    let item = proc_macro2::TokenStream::from(item);
    match syn::parse2::<syn::ItemFn>(item.clone()) {
        Ok(function) => expand::expand(&config, function, errors).into(),
        Err(_) => {
            let message = if syn::parse2::<syn::TraitItemFn>(item.clone()).is_ok() {
                "`#[serializable_retry]` goes on a function with a body: on a trait's implementation, write `#[serializable_retry(keep_signature)]` on the `async fn` of the `impl`"
            } else {
                "`#[serializable_retry]` applies to an `async fn`"
            };
            errors.push(syn::Error::new(proc_macro2::Span::call_site(), message));
            let errors = errors.to_compile_error();
            quote::quote!(#item #errors).into()
        }
    }
}
