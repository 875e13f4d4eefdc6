//! Code generation: the annotated function becomes a loop over the core crate's
//! `Attempts::begin` / body / `Attempts::end_attempt` steps (with the rerun inside a savepoint).
//!
//! Expansion never gives up on the function. An argument error was already replaced by the
//! defaults; a function of the wrong shape is emitted with the signature callers expect and a
//! body that is never run. Either way the error is appended, so a mistake is one error, on its
//! token, and callers keep type-checking.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{
    Attribute, FnArg, Ident, ItemFn, Pat, PatIdent, PatType, Receiver, ReturnType, Type,
    TypeReference,
};

use crate::attr::{Config, Isolation, Priority, Strategy};

/// Errors collected while expanding; all are emitted after the function.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub fn extend(&mut self, error: Option<syn::Error>) {
        if let Some(error) = error {
            self.push(error);
        }
    }

    fn push_new(&mut self, tokens: impl ToTokens, message: &str) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub fn to_compile_error(&self) -> TokenStream {
        self.0
            .as_ref()
            .map(syn::Error::to_compile_error)
            .unwrap_or_default()
    }
}

/// The parameter attribute that opts a `&mut` argument out of being restored before a retry.
const KEEP: &str = "keep";

pub fn expand(config: &Config, mut item: ItemFn, mut errors: Errors) -> TokenStream {
    // Our own attribute among the remaining ones: it was applied twice.
    item.attrs.retain(|attr| {
        let ours = attr
            .path()
            .segments
            .last()
            .is_some_and(|s| s.ident == "serializable_retry");
        if ours {
            errors.push_new(
                attr,
                "`#[serializable_retry]` is applied twice; remove one (the outer one wins when both are written)",
            );
        }
        !ours
    });
    // `#[async_trait]` ran first: the body is `Box::pin(async move { … })` and the signature
    // is the trait's, so it is kept.
    let boxed_output = async_trait_output(&item);
    let keep_signature = config.keep_signature || boxed_output.is_some();
    if item.sig.asyncness.is_none() && boxed_output.is_none() {
        // Expanded as the `async fn` it must be, so callers that `.await` it see no error.
        errors.push_new(
            item.sig.fn_token,
            "`#[serializable_retry]` needs an `async fn`: each attempt awaits the database",
        );
        item.sig.asyncness = Some(Default::default());
    }
    let krate = &config.krate;

    let Some((tx_index, tx)) = item
        .sig
        .inputs
        .iter()
        .enumerate()
        .find_map(|(i, arg)| match arg {
            FnArg::Typed(typed) => Some((i, typed)),
            FnArg::Receiver(_) => None,
        })
    else {
        errors.push(syn::Error::new(
            item.sig.paren_token.span.join(),
            "expected the transaction as the first parameter, e.g. `tx: &mut PgConnection`; callers pass a pool or connection in its place",
        ));
        let errors = errors.to_compile_error();
        return quote!(#item #errors);
    };
    let tx_name = match &*tx.pat {
        Pat::Ident(PatIdent {
            ident,
            by_ref: None,
            subpat: None,
            ..
        }) => ident.clone(),
        _ => format_ident!("__sqlx_retry_source"),
    };

    // A function of the wrong shape is emitted with the signature callers expect and a body
    // that never runs (`stub`); `lenient_source` replaces the source type when even the
    // connection type is unknown.
    let mut stub = false;
    let mut lenient_source = false;
    let conn_ty: Type = match &*tx.ty {
        Type::Reference(TypeReference {
            mutability: Some(_),
            elem,
            ..
        }) => {
            if let Some(instead) = not_a_connection(elem) {
                errors.push_new(elem, &instead);
                (stub, lenient_source) = (true, true);
            }
            (**elem).clone()
        }
        other => {
            let elem = match other {
                Type::Reference(r) => &*r.elem,
                _ => other,
            };
            if let Some(instead) = not_a_connection(elem) {
                errors.push_new(elem, &instead);
                lenient_source = true;
            } else {
                errors.push_new(
                    other,
                    "the transaction parameter must be a `&mut` reference, e.g. `tx: &mut PgConnection`",
                );
            }
            stub = true;
            elem.clone()
        }
    };

    let output: Type = match &item.sig.output {
        ReturnType::Type(..) if boxed_output.is_some() => boxed_output
            .clone()
            .unwrap_or_else(|| syn::parse_quote!(())),
        ReturnType::Type(_, ty) => (**ty).clone(),
        ReturnType::Default => {
            errors.push_new(
                &item.sig.ident,
                "`#[serializable_retry]` needs a function that returns a `Result` whose error converts from `sqlx::Error`",
            );
            stub = true;
            syn::parse_quote!(())
        }
    };
    if matches!(item.sig.output, ReturnType::Type(..)) {
        if not_a_result(&output) {
            errors.push_new(
                &output,
                "`#[serializable_retry]` needs a `Result` return type whose error converts from `sqlx::Error`: the error decides whether an attempt is retried",
            );
            stub = true;
        } else if let Some(reference) = borrows(&output, &conn_ty) {
            errors.push_new(
                reference,
                "the function cannot return the transaction's connection: the transaction ends (it commits or rolls back) before the function returns; return what you read from it instead",
            );
            stub = true;
        }
    }
    for input in &item.sig.inputs {
        if let FnArg::Receiver(receiver) = input
            && self_by_value(receiver)
        {
            errors.push_new(
                receiver,
                "`self` by value cannot be passed to every attempt; take `&self`, `&mut self` or `self: Arc<Self>`",
            );
            stub = true;
        }
    }

    // The transaction parameter: callers pass a source in its place, under the user's name so
    // that attributes below this one (`#[tracing::instrument(skip(tx))]`) still find it.
    let source_ty: Type = if lenient_source {
        syn::parse_quote!(impl ::core::marker::Sized)
    } else if keep_signature {
        (*tx.ty).clone()
    } else {
        syn::parse_quote_spanned! {tx.ty.span()=> impl #krate::TransactionSource<#conn_ty>}
    };
    let tx_pat = (*tx.pat).clone();
    let written_tx_ty = (*tx.ty).clone();
    if let FnArg::Typed(tx) = &mut item.sig.inputs[tx_index] {
        tx.attrs.retain(|attr| {
            if is_keep(attr) {
                errors.push_new(
                    attr,
                    "`#[keep]` applies to `&mut` arguments, not to the transaction",
                );
            }
            !is_keep(attr)
        });
        *tx.pat = plain_pat(tx_name.clone());
        *tx.ty = source_ty;
    }

    if stub {
        let written = if lenient_source {
            Some(written_tx_ty)
        } else {
            None
        };
        return expand_stub(item, errors, written);
    }
    if boxed_output.is_some() {
        // Retry the async block's body; the function still returns `Box::pin(async move { … })`.
        let receiver_mut = item
            .sig
            .receiver()
            .is_some_and(|r| r.mutability.is_some() && r.reference.is_some());
        let mut boxed = take_async_trait_block(&mut item);
        if receiver_mut {
            reborrow_async_trait_self(&mut boxed);
        }
        let body = expand_body(
            config,
            &mut item,
            &mut errors,
            tx_index,
            &tx_name,
            &tx_pat,
            &conn_ty,
            &output,
            &boxed,
        );
        put_async_trait_block(&mut item, body);
    } else {
        let user_body = (*item.block).clone();
        let body = expand_body(
            config,
            &mut item,
            &mut errors,
            tx_index,
            &tx_name,
            &tx_pat,
            &conn_ty,
            &output,
            &user_body,
        );
        *item.block = body;
    }
    let errors = errors.to_compile_error();
    quote!(#item #errors)
}

/// The function with its rewritten signature and a body that is never run: emitted with a shape
/// error so that callers type-check against the signature they will get.
fn expand_stub(mut item: ItemFn, errors: Errors, written_tx_ty: Option<Type>) -> TokenStream {
    // The source parameter has no lifetime to lend to references in the return type.
    if let ReturnType::Type(_, ty) = &mut item.sig.output {
        StaticReferences.visit_type_mut(ty);
    }
    // The type as written stays in use (no "unused import" beside the error).
    let keep_ty = written_tx_ty
        .map(|ty| quote!(let _: ::core::marker::PhantomData<#ty> = ::core::marker::PhantomData;));
    for input in item.sig.inputs.iter_mut() {
        if let FnArg::Typed(arg) = input {
            arg.attrs.retain(|a| !is_keep(a));
        } else if let FnArg::Receiver(receiver) = input {
            receiver.attrs.retain(|a| !is_keep(a));
        }
    }
    item.attrs.push(syn::parse_quote!(#[allow(unused_variables, unused_mut, unreachable_code, clippy::diverging_sub_expression)]));
    *item.block = syn::parse_quote!({
        #keep_ty
        ::core::unreachable!("`#[serializable_retry]` reported an error on this function")
    });
    let errors = errors.to_compile_error();
    quote!(#item #errors)
}

/// `tokens` moved to `span` for diagnostics, each token resolving as before.
fn located(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let proc_macro2::TokenTree::Group(group) = &tt {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), located(group.stream(), span));
                inner.set_span(group.span().located_at(span));
                tt = proc_macro2::TokenTree::Group(inner);
            } else {
                tt.set_span(tt.span().located_at(span));
            }
            tt
        })
        .collect()
}

fn plain_pat(ident: Ident) -> Pat {
    Pat::Ident(PatIdent {
        attrs: Vec::new(),
        by_ref: None,
        mutability: None,
        ident,
        subpat: None,
    })
}

/// Statements generated for one argument: where each runs.
#[derive(Default)]
struct ArgCode {
    /// Once per call, before the first attempt (the saved values).
    before: Vec<TokenStream>,
    /// At the start of each attempt (the user's binding: a clone or a reborrow).
    each: Vec<TokenStream>,
    /// Before each retry (restoring `&mut` arguments).
    retry: Vec<TokenStream>,
}

#[allow(clippy::too_many_arguments)]
fn expand_body(
    config: &Config,
    item: &mut ItemFn,
    errors: &mut Errors,
    tx_index: usize,
    source: &Ident,
    tx_pat: &Pat,
    conn_ty: &Type,
    output: &Type,
    body: &syn::Block,
) -> syn::Block {
    let krate = &config.krate;
    let private = quote!(#krate::__private);
    let name = item.sig.ident.to_string();

    let mut code = ArgCode::default();
    for (i, input) in item.sig.inputs.iter_mut().enumerate() {
        match input {
            FnArg::Receiver(receiver) => bind_receiver(receiver, &private, errors, &mut code),
            FnArg::Typed(arg) if i != tx_index => {
                bind_per_attempt(arg, i, &private, errors, &mut code)
            }
            FnArg::Typed(_) => {}
        }
    }
    let ArgCode {
        before,
        each,
        retry,
    } = code;

    let mut output_named = output.clone();
    InferImplTrait.visit_type_mut(&mut output_named);
    let output = &output_named;

    // Spans that only *locate* generated code on the user's tokens (for diagnostics) but resolve
    // at the call site like the rest of the expansion: the user's tokens may come from a
    // `macro_rules!` caller, whose hygiene would hide `__sqlx_retry_*` locals.
    let at = |span: Span| Span::call_site().located_at(span);
    let err_at = at(error_type_span(output));
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
        .end_attempt(__sqlx_retry_tx, __sqlx_retry_out, #chain)
    };

    // One policy per function, built on first use: the adaptive backoff's contention estimate
    // and the priority turns are shared by all calls of this function. With `policy = PATH`, by
    // all calls of every function that names that `static`.
    let (policy_static, policy_ref) = match &config.shared {
        // Spanned on the path: a `static` of another type is one error there.
        Some(path) => (
            quote!(),
            quote_spanned! {at(path.span())=> {
                let __sqlx_retry_policy: &'static #private::Policy = &#path;
                __sqlx_retry_policy
            }},
        ),
        None => {
            let policy = policy_tokens(config, &private);
            (
                quote! {
                    static __SQLX_RETRY_POLICY: ::std::sync::LazyLock<#private::Policy> =
                        ::std::sync::LazyLock::new(|| #policy);
                },
                quote!(&*__SQLX_RETRY_POLICY),
            )
        }
    };
    syn::parse_quote! {{
        #policy_static
        use #private::begin_failed as __sqlx_retry_begin_failed;
        let __sqlx_retry_span = #private::tracing::info_span!(#name);
        #private::tracing::Instrument::instrument(
            #private::attempt::<#output, _>(async move {
                let mut #source = #source;
                #(#before)*
                let mut __sqlx_retry_attempts =
                    #private::Attempts::new(#policy_ref, #name);
                loop {
                    let mut __sqlx_retry_tx = match __sqlx_retry_attempts.begin(&mut #source).await {
                        ::core::result::Result::Ok(::core::option::Option::Some(tx)) => tx,
                        ::core::result::Result::Ok(::core::option::Option::None) => continue,
                        ::core::result::Result::Err(__sqlx_retry_error) => return #begin_error,
                    };
                    loop {
                        // `scope` installs the attempt's after-commit registry while the body
                        // runs.
                        let __sqlx_retry_out: #output = __sqlx_retry_attempts
                            .scope(#private::attempt::<#output, _>(async {
                                #tx_binding
                                #(#each)*
                                #body
                            }))
                            .await;
                        let __sqlx_retry_next = __sqlx_retry_attempts
                            #finish
                            .await;
                        // Retried (a new transaction, or the same one rolled back to its
                        // savepoint): `&mut` arguments get their value from before the call
                        // back, as the database's rows did.
                        match __sqlx_retry_next {
                            #private::Next::Return(__sqlx_retry_result) => return __sqlx_retry_result,
                            #private::Next::Begin => {
                                #(#retry)*
                                break;
                            }
                            #private::Next::Rerun(__sqlx_retry_again) => {
                                __sqlx_retry_tx = __sqlx_retry_again;
                                #(#retry)*
                            }
                        }
                    }
                }
            }),
            __sqlx_retry_span,
        )
        .await
    }}
}

/// `&mut self` is restored before a retry (unless `#[keep]`); every other receiver is used by
/// reference in each attempt.
fn bind_receiver(
    receiver: &mut Receiver,
    private: &TokenStream,
    errors: &mut Errors,
    code: &mut ArgCode,
) {
    let keep = receiver.attrs.iter().any(is_keep);
    receiver.attrs.retain(|a| !is_keep(a));
    let mutable_ref = match &*receiver.ty {
        Type::Reference(r) => r.mutability.is_some(),
        _ => false,
    };
    if !mutable_ref {
        if keep {
            errors.push_new(
                receiver.self_token,
                "`#[keep]` applies to `&mut self` and `&mut` arguments: nothing else is restored",
            );
        }
        return;
    }
    if keep {
        return;
    }
    let self_token = &receiver.self_token;
    let saved = quote!(__sqlx_retry_saved_self);
    let save = located(quote!(#private::save(&*#self_token)), receiver.span());
    code.before.push(quote!(let #saved = #save;));
    code.retry.push(quote!(#saved.restore(&mut *#self_token);));
}

/// Renames parameter `arg` in the signature if needed and generates the statements that give
/// each attempt its own copy under the user's pattern.
fn bind_per_attempt(
    arg: &mut PatType,
    index: usize,
    private: &TokenStream,
    errors: &mut Errors,
    code: &mut ArgCode,
) {
    let keep_attr = arg.attrs.iter().find(|a| is_keep(a)).cloned();
    arg.attrs.retain(|a| !is_keep(a));
    let attrs: Vec<Attribute> = carried(&arg.attrs).into_iter().cloned().collect();
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
    *arg.pat = plain_pat(outer.clone());
    let span = ty.span();
    let at = Span::call_site().located_at(span);
    let saved = format_ident!("__sqlx_retry_saved{}", index, span = at);
    match mutable_target(&ty) {
        // `&mut T`: each attempt reborrows; restored before a retry unless `#[keep]`.
        Some((target, false)) => {
            code.each.push(quote_spanned! {span=>
                #(#attrs)*
                #[allow(unused_mut)]
                let #user_pat = &mut *#outer;
            });
            if keep_attr.is_none() && is_unsized(target) {
                // Cannot be cloned, so cannot be restored: one error here, none from the bounds.
                errors.push_new(
                    target,
                    "`#[serializable_retry]` restores `&mut` arguments when an attempt is retried, and an unsized value cannot be cloned: mark the parameter `#[keep]` to keep what failed attempts wrote",
                );
            } else if keep_attr.is_none() {
                let save = located(quote!(#private::save(&*#outer)), target.span());
                code.before.push(quote!(#(#attrs)* let #saved = #save;));
                code.retry
                    .push(quote!(#(#attrs)* #saved.restore(&mut *#outer);));
            }
        }
        // `Option<&mut T>`: each attempt reborrows the reference inside.
        Some((target, true)) => {
            code.before.push(quote! {
                #(#attrs)*
                #[allow(unused_mut)]
                let mut #outer = #outer;
            });
            code.each.push(quote_spanned! {span=>
                #(#attrs)*
                #[allow(unused_mut)]
                let #user_pat = ::core::option::Option::as_deref_mut(&mut #outer);
            });
            if keep_attr.is_none() && is_unsized(target) {
                errors.push_new(
                    target,
                    "`#[serializable_retry]` restores `&mut` arguments when an attempt is retried, and an unsized value cannot be cloned: mark the parameter `#[keep]` to keep what failed attempts wrote",
                );
            } else if keep_attr.is_none() {
                let save = located(
                    quote!(::core::option::Option::map(::core::option::Option::as_deref(&#outer), #private::save)),
                    target.span(),
                );
                code.before.push(quote!(#(#attrs)* let #saved = #save;));
                code.retry.push(quote! {
                    #(#attrs)*
                    if let (::core::option::Option::Some(__sqlx_retry_now), ::core::option::Option::Some(__sqlx_retry_then)) =
                        (::core::option::Option::as_deref_mut(&mut #outer), &#saved)
                    {
                        __sqlx_retry_then.restore(__sqlx_retry_now);
                    }
                });
            }
        }
        // Everything else: each attempt gets its own clone (a copy for `&T` and `Copy` types).
        // The call, its argument included, is located on the parameter's type so a type that is
        // not `Clone` is reported there; it resolves like the parameter's name in the signature.
        None => {
            if let Some(keep) = keep_attr {
                errors.push_new(
                    keep,
                    "`#[keep]` applies to `&mut` arguments: every other argument is cloned for each attempt",
                );
            }
            let at_ty = outer.span().located_at(span);
            let outer = Ident::new(&outer.to_string(), at_ty);
            code.each.push(quote_spanned! {at_ty=>
                #(#attrs)*
                #[allow(unused_mut, clippy::clone_on_copy, clippy::redundant_clone)]
                let #user_pat = ::core::clone::Clone::clone(&#outer);
            });
        }
    }
}

/// `dyn Trait`, `[T]` and `str`: types that are plainly not `Sized`, so not `Clone`.
fn is_unsized(ty: &Type) -> bool {
    match ty {
        Type::TraitObject(_) | Type::Slice(_) => true,
        Type::Paren(p) => is_unsized(&p.elem),
        Type::Path(p) => p.qself.is_none() && p.path.is_ident("str"),
        _ => false,
    }
}

/// `&mut T` → `(T, false)`; `Option<&mut T>` → `(T, true)`.
fn mutable_target(ty: &Type) -> Option<(&Type, bool)> {
    match ty {
        Type::Reference(TypeReference {
            mutability: Some(_),
            elem,
            ..
        }) => Some((elem, false)),
        Type::Paren(p) => mutable_target(&p.elem),
        Type::Path(p) if p.qself.is_none() => {
            let last = p.path.segments.last()?;
            if last.ident != "Option" {
                return None;
            }
            let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
                return None;
            };
            match args.args.first()? {
                syn::GenericArgument::Type(Type::Reference(TypeReference {
                    mutability: Some(_),
                    elem,
                    ..
                })) if args.args.len() == 1 => Some((elem, true)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// What to take instead of a pool or a transaction as the transaction parameter's type.
fn not_a_connection(ty: &Type) -> Option<String> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?.ident.to_string();
    let text = path.to_token_stream().to_string();
    let conn = if text.contains("MySql") {
        "MySqlConnection"
    } else if text.contains("Sqlite") {
        "SqliteConnection"
    } else {
        "PgConnection"
    };
    let what = match last.as_str() {
        "Pool" | "PgPool" | "MySqlPool" | "SqlitePool" | "AnyPool" => "a pool",
        "Transaction" | "PgTransaction" | "MySqlTransaction" | "SqliteTransaction" => {
            "a transaction"
        }
        "PoolConnection" => "a pooled connection",
        _ => return None,
    };
    Some(format!(
        "the transaction parameter is the connection the body runs on, not {what}: take `tx: &mut {conn}`; callers pass a pool, a connection or an open transaction in its place"
    ))
}

/// Return types that are plainly not a `Result` (a type alias to one is not recognised here;
/// such a function gets the compiler's errors instead).
fn not_a_result(ty: &Type) -> bool {
    match ty {
        Type::Tuple(_)
        | Type::Reference(_)
        | Type::Array(_)
        | Type::Slice(_)
        | Type::Ptr(_)
        | Type::Never(_)
        | Type::ImplTrait(_)
        | Type::TraitObject(_)
        | Type::BareFn(_) => true,
        Type::Paren(p) => not_a_result(&p.elem),
        Type::Path(path) => path.path.segments.last().is_some_and(|s| {
            matches!(
                s.ident.to_string().as_str(),
                "Option"
                    | "Vec"
                    | "String"
                    | "bool"
                    | "char"
                    | "str"
                    | "i8"
                    | "i16"
                    | "i32"
                    | "i64"
                    | "i128"
                    | "isize"
                    | "u8"
                    | "u16"
                    | "u32"
                    | "u64"
                    | "u128"
                    | "usize"
                    | "f32"
                    | "f64"
                    | "Box"
                    | "Arc"
                    | "Rc"
                    | "HashMap"
                    | "BTreeMap"
                    | "HashSet"
                    | "BTreeSet"
                    | "Cow"
            )
        }),
        _ => false,
    }
}

/// A reference to the connection type anywhere in the return type.
fn borrows<'a>(output: &'a Type, conn: &Type) -> Option<&'a Type> {
    struct Find<'a, 'c> {
        conn: String,
        found: Option<&'a Type>,
        _c: std::marker::PhantomData<&'c ()>,
    }
    impl<'a> syn::visit::Visit<'a> for Find<'a, '_> {
        fn visit_type(&mut self, ty: &'a Type) {
            if self.found.is_none()
                && let Type::Reference(r) = ty
                && r.elem.to_token_stream().to_string() == self.conn
            {
                self.found = Some(ty);
                return;
            }
            syn::visit::visit_type(self, ty);
        }
    }
    let mut find = Find {
        conn: conn.to_token_stream().to_string(),
        found: None,
        _c: std::marker::PhantomData,
    };
    syn::visit::Visit::visit_type(&mut find, output);
    find.found
}

/// `self` or `mut self` or `self: Self`: moved into the first attempt, unavailable to the next.
/// `self: Arc<Self>`, `self: Box<Self>`, `self: Pin<&mut Self>` are used by reference in each
/// attempt.
fn self_by_value(receiver: &Receiver) -> bool {
    if receiver.reference.is_some() {
        return false;
    }
    match &*receiver.ty {
        Type::Path(p) => p.qself.is_none() && p.path.is_ident("Self"),
        _ => false,
    }
}

/// `impl Trait` in the return type becomes `_` where the expansion names the type: the body
/// defines it, as it would without the attribute.
struct InferImplTrait;

impl VisitMut for InferImplTrait {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(_) = ty {
            *ty = Type::Infer(syn::TypeInfer {
                underscore_token: Default::default(),
            });
            return;
        }
        syn::visit_mut::visit_type_mut(self, ty);
    }
}

/// Elided references get `'static` (in a stub's return type only).
struct StaticReferences;

impl VisitMut for StaticReferences {
    fn visit_type_reference_mut(&mut self, reference: &mut TypeReference) {
        if reference.lifetime.is_none() {
            reference.lifetime = Some(syn::parse_quote!('static));
        }
        syn::visit_mut::visit_type_reference_mut(self, reference);
    }
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

/// Attributes of a parameter that must also sit on the statements generated for it: `cfg`
/// removes them together; lint levels keep applying to the user's binding.
fn carried(attrs: &[Attribute]) -> Vec<&Attribute> {
    attrs
        .iter()
        .filter(|a| {
            [
                "cfg", "cfg_attr", "allow", "warn", "deny", "forbid", "expect",
            ]
            .iter()
            .any(|name| a.path().is_ident(name))
        })
        .collect()
}

fn is_keep(attr: &Attribute) -> bool {
    attr.path().is_ident(KEEP)
}

fn policy_tokens(config: &Config, private: &TokenStream) -> TokenStream {
    let max = config.max.map_or(
        quote!(#private::Policy::DEFAULT_MAX_ATTEMPTS),
        |n| quote!(#n),
    );
    let isolation = match config.isolation {
        Isolation::Serializable => quote!(#private::IsolationLevel::Serializable),
        Isolation::RepeatableRead => quote!(#private::IsolationLevel::RepeatableRead),
        Isolation::ReadCommitted => quote!(#private::IsolationLevel::ReadCommitted),
    };
    let read_only = config.read_only;
    let deferrable = config.deferrable;
    let idempotent = config.idempotent;
    let nanos = |d: std::time::Duration| {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        quote!(::core::time::Duration::from_nanos(#n))
    };
    let backoff = match &config.backoff {
        None => quote!(#private::Backoff::default()),
        Some(b) => {
            let base = b
                .base
                .map_or(quote!(#private::Backoff::DEFAULT_BASE), nanos);
            let cap = b.cap.map_or(quote!(#private::Backoff::DEFAULT_CAP), nanos);
            match b.strategy {
                Strategy::Adaptive => quote!(#private::Backoff::adaptive(#base, #cap)),
                Strategy::Exponential => quote!(#private::Backoff::exponential(#base, #cap)),
                Strategy::Decorrelated => quote!(#private::Backoff::decorrelated(#base, #cap)),
                Strategy::None => quote!(#private::Backoff::none()),
            }
        }
    };
    let priority_after = match config.priority {
        Priority::Default => {
            quote!(::core::option::Option::Some(#private::Policy::DEFAULT_PRIORITY_AFTER))
        }
        Priority::After(n) => quote!(::core::option::Option::Some(#n)),
        Priority::Off => quote!(::core::option::Option::None),
    };
    let budget = match config.budget {
        Some(d) => {
            let d = nanos(d);
            quote!(::core::option::Option::Some(#d))
        }
        None => quote!(::core::option::Option::None),
    };
    // Checked by the attribute; `sqlx_retry::__private::sqlstate` is a `const fn` evaluated in a
    // `const` item, so a malformed code could only stop the build, never become another code.
    let codes = config.retry_on.iter().map(|c| {
        let c = &c.0;
        quote!(#private::sqlstate(#c))
    });
    let policy = quote! {
        #private::attribute_policy(
            #max,
            #isolation,
            #read_only,
            #deferrable,
            #backoff,
            #budget,
            {
                const __SQLX_RETRY_CODES: &[#private::SqlState] = &[#(#codes),*];
                __SQLX_RETRY_CODES
            },
            #idempotent,
            #priority_after,
        )
    };
    let policy = if config.replica {
        quote!(#private::replica(#policy))
    } else {
        policy
    };
    match &config.savepoint {
        // Checked as a plain SQL identifier by the attribute.
        Some(name) => quote!(#private::with_savepoint(#policy, #name)),
        None => policy,
    }
}

/// The async block of an `#[async_trait]` method: its body's last expression is
/// `Box::pin(async move { … })` (the form tracing-attributes recognises too).
fn async_trait_block(item: &mut ItemFn) -> Option<&mut syn::ExprAsync> {
    if item.sig.asyncness.is_some() {
        return None;
    }
    let syn::Stmt::Expr(syn::Expr::Call(call), None) = item.block.stmts.last_mut()? else {
        return None;
    };
    let syn::Expr::Path(func) = &*call.func else {
        return None;
    };
    let segments: Vec<String> = func
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    if !segments.ends_with(&["Box".to_string(), "pin".to_string()]) || call.args.len() != 1 {
        return None;
    }
    match call.args.first_mut()? {
        syn::Expr::Async(block) if block.capture.is_some() => Some(block),
        _ => None,
    }
}

/// `X` in an `#[async_trait]` method's `Pin<Box<dyn Future<Output = X> + Send + 'async_trait>>`.
fn async_trait_output(item: &ItemFn) -> Option<Type> {
    let mut probe = item.clone();
    async_trait_block(&mut probe)?;
    let ReturnType::Type(_, ty) = &item.sig.output else {
        return None;
    };
    struct Find(Option<Type>);
    impl<'a> syn::visit::Visit<'a> for Find {
        fn visit_assoc_type(&mut self, assoc: &'a syn::AssocType) {
            if self.0.is_none() && assoc.ident == "Output" {
                self.0 = Some(assoc.ty.clone());
            }
        }
    }
    let mut find = Find(None);
    syn::visit::Visit::visit_type(&mut find, ty);
    find.0
}

fn take_async_trait_block(item: &mut ItemFn) -> syn::Block {
    async_trait_block(item).map_or_else(|| syn::parse_quote!({}), |b| b.block.clone())
}

fn put_async_trait_block(item: &mut ItemFn, body: syn::Block) {
    if let Some(block) = async_trait_block(item) {
        block.block = body;
    }
}

/// `#[async_trait]` moves `self` into `__self` at the top of the body; with `&mut self` each
/// attempt reborrows instead, since the body runs more than once.
fn reborrow_async_trait_self(block: &mut syn::Block) {
    for stmt in &mut block.stmts {
        if let syn::Stmt::Local(local) = stmt
            && let Pat::Ident(pat) = &local.pat
            && pat.ident == "__self"
            && let Some(init) = &mut local.init
            && let syn::Expr::Path(path) = &*init.expr
            && path.path.is_ident("self")
        {
            init.expr = syn::parse_quote!(&mut *self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr;

    fn expand_str(args: &str, item: &str) -> (String, String) {
        let (config, error) = attr::parse(args.parse().unwrap());
        let mut errors = Errors::default();
        errors.extend(error);
        let out = expand(&config, syn::parse_str(item).unwrap(), errors).to_string();
        let errors = out
            .match_indices("compile_error")
            .map(|(i, _)| out[i..].split(')').next().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
            .join("\n");
        (out, errors)
    }

    const F: &str =
        "async fn f(tx: &mut PgConnection, n: i64) -> Result<i64, sqlx::Error> { Ok(n) }";

    #[test]
    fn an_argument_error_still_rewrites_the_signature() {
        let (out, errors) = expand_str("max = 0", F);
        assert!(errors.contains("at least 1"), "{errors}");
        assert_eq!(out.matches("compile_error").count(), 1);
        assert!(
            out.contains("tx : impl :: sqlx_retry :: TransactionSource < PgConnection >"),
            "{out}"
        );
    }

    #[test]
    fn generated_code_names_only_the_source_trait_and_private_items() {
        let (out, errors) = expand_str(r#"retry_on = ["55P03"], budget = "2s""#, F);
        assert!(errors.is_empty(), "{errors}");
        let named: Vec<&str> = out
            .match_indices(":: sqlx_retry ::")
            .map(|(i, _)| out[i + 17..].split_whitespace().next().unwrap_or_default())
            .collect();
        assert!(
            named
                .iter()
                .all(|n| *n == "TransactionSource" || *n == "__private"),
            "{named:?}"
        );
        assert!(out.contains("__private :: sqlstate (\"55P03\")"), "{out}");
    }

    #[test]
    fn a_wrong_shape_gives_a_stub_with_the_callers_signature() {
        let (out, errors) = expand_str(
            "",
            "async fn f(tx: &mut PgConnection) -> Option<i64> { None }",
        );
        assert!(errors.contains("needs a `Result` return type"), "{errors}");
        assert!(out.contains("impl :: sqlx_retry :: TransactionSource < PgConnection >"));
        assert!(out.contains("unreachable"));
        let (out, errors) = expand_str(
            "",
            "async fn f(tx: &mut PgPool) -> Result<(), E> { Ok(()) }",
        );
        assert!(errors.contains("not a pool"), "{errors}");
        assert!(out.contains("impl :: core :: marker :: Sized"), "{out}");
    }

    #[test]
    fn keep_signature_keeps_the_transaction_parameter() {
        let (out, errors) = expand_str("keep_signature", F);
        assert!(errors.is_empty(), "{errors}");
        assert!(
            out.contains("async fn f (tx : & mut PgConnection , n : i64)"),
            "{out}"
        );
        assert!(!out.contains("TransactionSource"));
    }

    #[test]
    fn recognises_mut_arguments_and_plain_results() {
        let ty = |s: &str| syn::parse_str::<Type>(s).unwrap();
        assert!(matches!(
            mutable_target(&ty("&mut Vec<i64>")),
            Some((_, false))
        ));
        assert!(matches!(
            mutable_target(&ty("Option<&mut Vec<i64>>")),
            Some((_, true))
        ));
        assert!(mutable_target(&ty("Option<&Vec<i64>>")).is_none());
        assert!(mutable_target(&ty("&Vec<i64>")).is_none());
        assert!(is_unsized(&ty("dyn std::io::Write")) && is_unsized(&ty("[u8]")));
        assert!(!is_unsized(&ty("Vec<u8>")));
        assert!(not_a_result(&ty("Option<i64>")));
        assert!(not_a_result(&ty("()")));
        assert!(!not_a_result(&ty("anyhow::Result<i64>")));
        assert!(!not_a_result(&ty("MyResult<i64>")));
        assert!(borrows(&ty("Result<&mut PgConnection, E>"), &ty("PgConnection")).is_some());
        assert!(borrows(&ty("Result<&str, E>"), &ty("PgConnection")).is_none());
    }
}
