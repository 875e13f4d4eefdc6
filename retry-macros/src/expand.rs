//! Code generation: the annotated function becomes a loop over the core crate's
//! `Attempts::begin` / body / `Attempts::finish` steps.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, Pat, PatIdent, PatType, ReturnType, Type, TypeReference};

use crate::attr::{Args, Isolation, Strategy};

/// The checked shape of the annotated function.
struct Shape {
    /// The transaction parameter's pattern (usually `tx`) and the type it points to.
    tx_pat: Pat,
    conn_ty: Type,
    /// Index of the transaction parameter in `sig.inputs`.
    tx_index: usize,
    output: Type,
}

fn check(item: &ItemFn) -> syn::Result<Shape> {
    let sig = &item.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "`#[serializable_retry]` needs an `async fn`: each attempt awaits the database",
        ));
    }
    let output = match &sig.output {
        ReturnType::Type(_, ty) => &**ty,
        ReturnType::Default => {
            return Err(syn::Error::new_spanned(
                &sig.ident,
                "`#[serializable_retry]` needs a function that returns a `Result` whose error converts from `sqlx::Error`",
            ));
        }
    };
    for input in &sig.inputs {
        if let FnArg::Receiver(receiver) = input
            && receiver.reference.is_none()
        {
            return Err(syn::Error::new_spanned(
                receiver,
                "`self` by value cannot be passed to every attempt; take `&self` or `&mut self`",
            ));
        }
    }
    let (tx_index, tx) = sig
        .inputs
        .iter()
        .enumerate()
        .find_map(|(i, arg)| match arg {
            FnArg::Typed(t) => Some((i, t)),
            FnArg::Receiver(_) => None,
        })
        .ok_or_else(|| {
            syn::Error::new(
                sig.paren_token.span.join(),
                "expected the transaction as the first parameter, e.g. `tx: &mut PgConnection`; callers pass a pool or connection in its place",
            )
        })?;
    let conn_ty = match &*tx.ty {
        Type::Reference(TypeReference {
            mutability: Some(_),
            elem,
            ..
        }) => &**elem,
        other => {
            return Err(syn::Error::new_spanned(
                other,
                "the first parameter is the transaction and must be a `&mut` reference, e.g. `tx: &mut PgConnection`",
            ));
        }
    };
    Ok(Shape {
        tx_pat: (*tx.pat).clone(),
        conn_ty: conn_ty.clone(),
        tx_index,
        output: output.clone(),
    })
}

pub fn expand(args: &Args, mut item: ItemFn) -> syn::Result<TokenStream> {
    let shape = check(&item)?;
    let krate: syn::Path = args
        .krate
        .as_ref()
        .map_or_else(|| syn::parse_quote!(::sqlx_retry), |k| k.value.clone());
    let private = quote!(#krate::__private);

    let Shape {
        tx_pat,
        conn_ty,
        tx_index,
        output,
    } = shape;
    let name = item.sig.ident.to_string();
    let source = format_ident!("__sqlx_retry_source");

    // Every other parameter is bound to a plain name in the signature and given to each attempt
    // as a fresh copy (a reborrow for `&mut` parameters).
    let mut per_attempt = Vec::new();
    for (i, input) in item.sig.inputs.iter_mut().enumerate() {
        let FnArg::Typed(arg) = input else { continue };
        if i == tx_index {
            *arg = PatType {
                attrs: arg.attrs.clone(),
                pat: Box::new(Pat::Ident(PatIdent {
                    attrs: Vec::new(),
                    by_ref: None,
                    mutability: None,
                    ident: source.clone(),
                    subpat: None,
                })),
                colon_token: arg.colon_token,
                ty: Box::new(syn::parse_quote_spanned! {arg.ty.span()=>
                    impl #krate::TransactionSource<#conn_ty>
                }),
            };
            continue;
        }
        per_attempt.push(bind_per_attempt(arg, i));
    }

    let policy = policy_tokens(args, &krate);
    let body = &item.block;
    // Spans that only *locate* generated code on the user's tokens (for diagnostics) but resolve
    // at the call site like the rest of the expansion: the user's tokens may come from a
    // `macro_rules!` caller, whose hygiene would hide `__sqlx_retry_*` locals.
    let at = |span: Span| Span::call_site().located_at(span);
    let err_at = at(error_type_span(&output));
    let chain = quote_spanned! {err_at=>
        |__sqlx_retry_error| {
            #[allow(unused_imports)]
            use #private::{ViaAsRef as _, ViaAsRefSendSync as _, ViaError as _, ViaNothing as _};
            (&&&&#private::Probe(__sqlx_retry_error)).__sqlx_retry_chain()
        }
    };
    let tx_binding = quote_spanned! {at(tx_pat.span())=>
        #[allow(unused_mut)]
        let #tx_pat: &mut #conn_ty = #private::OpenTransaction::conn(&mut __sqlx_retry_tx);
    };
    let begin_error = quote_spanned! {err_at=>
        __sqlx_retry_begin_failed(__sqlx_retry_error)
    };
    let finish = quote_spanned! {err_at=>
        .finish(__sqlx_retry_tx, __sqlx_retry_out, #chain)
    };

    let new_body = quote! {{
        // One policy per function, built on first use: the adaptive backoff's contention estimate
        // is shared by all calls of this function.
        static __SQLX_RETRY_POLICY: ::std::sync::LazyLock<#krate::Policy> =
            ::std::sync::LazyLock::new(|| #policy);
        use #private::begin_failed as __sqlx_retry_begin_failed;
        let __sqlx_retry_span = #private::tracing::info_span!(#name);
        #private::tracing::Instrument::instrument(
            #private::attempt::<#output, _>(async move {
                let mut #source = #source;
                let mut __sqlx_retry_attempts =
                    #private::Attempts::new(&*__SQLX_RETRY_POLICY, #name);
                loop {
                    let mut __sqlx_retry_tx = match __sqlx_retry_attempts.begin(&mut #source).await {
                        ::core::result::Result::Ok(::core::option::Option::Some(tx)) => tx,
                        ::core::result::Result::Ok(::core::option::Option::None) => continue,
                        ::core::result::Result::Err(__sqlx_retry_error) => return #begin_error,
                    };
                    // `scope` installs the attempt's after-commit registry while the body runs.
                    let __sqlx_retry_out: #output = __sqlx_retry_attempts
                        .scope(#private::attempt::<#output, _>(async {
                            #tx_binding
                            #(#per_attempt)*
                            #body
                        }))
                        .await;
                    if let ::core::option::Option::Some(__sqlx_retry_result) = __sqlx_retry_attempts
                        #finish
                        .await
                    {
                        return __sqlx_retry_result;
                    }
                }
            }),
            __sqlx_retry_span,
        )
        .await
    }};
    *item.block = syn::parse2(new_body)?;
    Ok(quote!(#item))
}

/// Where errors about the function's error type point: `E` in `…Result<T, E>`, else the return
/// type (`anyhow::Result<T>`).
fn error_type_span(output: &Type) -> Span {
    if let Type::Path(path) = output
        && let Some(last) = path.path.segments.last()
        && let syn::PathArguments::AngleBracketed(args) = &last.arguments
        && let Some(syn::GenericArgument::Type(error)) = args.args.iter().nth(1)
    {
        return error.span();
    }
    output.span()
}

/// Renames parameter `arg` in the signature if needed and returns the statement that gives the
/// attempt its own copy under the user's pattern.
fn bind_per_attempt(arg: &mut PatType, index: usize) -> TokenStream {
    let user_pat = (*arg.pat).clone();
    let ty = (*arg.ty).clone();
    let outer: Ident = match &user_pat {
        Pat::Ident(PatIdent {
            ident,
            subpat: None,
            by_ref: None,
            ..
        }) => ident.clone(),
        _ => format_ident!("__sqlx_retry_arg{}", index),
    };
    *arg.pat = Pat::Ident(PatIdent {
        attrs: Vec::new(),
        by_ref: None,
        mutability: None,
        ident: outer.clone(),
        subpat: None,
    });
    let span = ty.span();
    match &ty {
        // `&mut T`: each attempt reborrows.
        Type::Reference(TypeReference {
            mutability: Some(_),
            ..
        }) => quote_spanned! {span=>
            #[allow(unused_mut)]
            let #user_pat = &mut *#outer;
        },
        // Everything else: each attempt gets its own clone (a copy for `&T` and `Copy` types).
        // The call, its argument included, is located on the parameter's type so a type that is
        // not `Clone` is reported there; it resolves like the parameter's name in the signature.
        _ => {
            let at_ty = outer.span().located_at(span);
            let outer = Ident::new(&outer.to_string(), at_ty);
            quote_spanned! {at_ty=>
                #[allow(unused_mut, clippy::clone_on_copy, clippy::redundant_clone)]
                let #user_pat = ::core::clone::Clone::clone(&#outer);
            }
        }
    }
}

fn policy_tokens(args: &Args, krate: &syn::Path) -> TokenStream {
    let max = args
        .max
        .as_ref()
        .map_or(quote!(#krate::Policy::DEFAULT_MAX_ATTEMPTS), |m| {
            let n = m.value;
            quote!(#n)
        });
    let isolation = match args.isolation() {
        Isolation::Serializable => quote!(#krate::IsolationLevel::Serializable),
        Isolation::RepeatableRead => quote!(#krate::IsolationLevel::RepeatableRead),
        Isolation::ReadCommitted => quote!(#krate::IsolationLevel::ReadCommitted),
    };
    let read_only = args.read_only.is_some();
    let deferrable = args.deferrable.is_some();
    let idempotent = args.idempotent.is_some();
    let nanos = |d: std::time::Duration| {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        quote!(::core::time::Duration::from_nanos(#n))
    };
    let backoff = match args.backoff.as_ref().map(|b| &b.value) {
        None => quote!(#krate::Backoff::default()),
        Some(b) => {
            let base = b.base.map_or(quote!(#krate::Backoff::DEFAULT_BASE), nanos);
            let cap = b.cap.map_or(quote!(#krate::Backoff::DEFAULT_CAP), nanos);
            match b.strategy {
                Strategy::Adaptive => quote!(#krate::Backoff::adaptive(#base, #cap)),
                Strategy::Exponential => quote!(#krate::Backoff::exponential(#base, #cap)),
                Strategy::Decorrelated => quote!(#krate::Backoff::decorrelated(#base, #cap)),
                Strategy::None => quote!(#krate::Backoff::none()),
            }
        }
    };
    let timeout = match &args.timeout {
        Some(t) => {
            let d = nanos(t.value);
            quote!(::core::option::Option::Some(#d))
        }
        None => quote!(::core::option::Option::None),
    };
    let codes = args
        .retry_on
        .as_ref()
        .map(|r| r.value.clone())
        .unwrap_or_default();
    let codes = codes.iter().map(|c| {
        quote! {
            match #krate::SqlState::new(#c) {
                ::core::option::Option::Some(code) => code,
                ::core::option::Option::None => #krate::SqlState::SERIALIZATION_FAILURE,
            }
        }
    });
    quote! {
        #krate::Policy::__from_attribute(
            #max,
            #isolation,
            #read_only,
            #deferrable,
            #backoff,
            #timeout,
            // A `const` item: its top-level borrow lives for `'static`, which a `&[match …]`
            // passed straight to a function in a `static` initializer would not.
            {
                const __SQLX_RETRY_CODES: &[#krate::SqlState] = &[#(#codes),*];
                __SQLX_RETRY_CODES
            },
            #idempotent,
        )
    }
}
