//! Coercing variable values (GraphQL spec § 6.1.2 "CoerceVariableValues" and § 3 "Input
//! Coercion" of each type), checked against the schema before anything executes.
//!
//! async-graphql validates variables only where an argument uses them, and lets some wrong values
//! through to the resolvers (`null` for `String!`, a string where an input object belongs), so
//! that they fail later as field errors with `data: null`. The spec makes every one of them a
//! request error: nothing runs. This walks each declared variable's value against its type.

use async_graphql::{
    Value,
    parser::types::{BaseType, Type},
    registry::{MetaType, Registry},
};

/// Why `value` does not coerce to `ty`, naming where (`$input.email`), or `None` when it does.
/// `value` is `None` when the request gives no value at all.
pub fn coercion_error(
    registry: &Registry,
    ty: &Type,
    value: Option<&Value>,
    has_default: bool,
    path: &str,
) -> Option<String> {
    match value {
        None if has_default || ty.nullable => None,
        None => Some(format!("{path} of type {ty} needs a value")),
        Some(value) => value_error(registry, ty, value, path),
    }
}

fn value_error(registry: &Registry, ty: &Type, value: &Value, path: &str) -> Option<String> {
    if *value == Value::Null {
        return (!ty.nullable).then(|| format!("{path} of type {ty} must not be null"));
    }
    match &ty.base {
        // A single value coerces to a list of one (§ 3.11 "Input Coercion").
        BaseType::List(item) => match value {
            Value::List(items) => items.iter().enumerate().find_map(|(index, item_value)| {
                value_error(registry, item, item_value, &format!("{path}[{index}]"))
            }),
            single => value_error(registry, item, single, path),
        },
        BaseType::Named(name) => match registry.types.get(name.as_str()) {
            Some(MetaType::Scalar { is_valid, .. }) => is_valid
                .as_ref()
                .is_some_and(|is_valid| !is_valid(value))
                .then(|| format!("{path} is not a valid {name}")),
            Some(MetaType::Enum { enum_values, .. }) => {
                let known = match value {
                    Value::Enum(item) => enum_values.contains_key(item.as_str()),
                    Value::String(item) => enum_values.contains_key(item.as_str()),
                    _ => false,
                };
                (!known).then(|| format!("{path} is not a value of {name}"))
            }
            Some(MetaType::InputObject { input_fields, .. }) => {
                let Value::Object(fields) = value else {
                    return Some(format!("{path} must be an object of type {name}"));
                };
                if let Some(unknown) = fields
                    .keys()
                    .find(|key| !input_fields.contains_key(key.as_str()))
                {
                    return Some(format!("{path}.{unknown} is not a field of {name}"));
                }
                input_fields.values().find_map(|field| {
                    let field_type = Type::new(&field.ty)?;
                    coercion_error(
                        registry,
                        &field_type,
                        fields.get(field.name.as_str()),
                        field.default_value.is_some(),
                        &format!("{path}.{}", field.name),
                    )
                })
            }
            // Output types cannot be variables; validation has said so already.
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::{InputObject, InputType, value};

    #[derive(InputObject)]
    struct Pair {
        name: String,
        note: Option<String>,
    }

    fn check(ty: &str, value: Option<Value>) -> Option<String> {
        let mut registry = Registry::default();
        Pair::create_type_info(&mut registry);
        <String as InputType>::create_type_info(&mut registry);
        coercion_error(
            &registry,
            &Type::new(ty).unwrap(),
            value.as_ref(),
            false,
            "$v",
        )
    }

    #[test]
    fn values_are_checked_against_their_type() {
        assert!(check("String!", Some(value!("x"))).is_none());
        assert!(check("String!", Some(value!(123))).is_some());
        assert!(check("String!", Some(Value::Null)).is_some());
        assert!(check("String!", None).is_some());
        assert!(check("String", None).is_none());
        assert!(check("[String!]!", Some(value!(["a", "b"]))).is_none());
        assert!(check("[String!]!", Some(value!("a"))).is_none());
        assert!(check("[String!]!", Some(value!(["a", null]))).is_some());
        assert!(check("Pair!", Some(value!({"name": "n"}))).is_none());
        assert!(check("Pair!", Some(value!("not an object"))).is_some());
        assert!(check("Pair!", Some(value!({"name": "n", "bogus": 1}))).is_some());
        assert!(check("Pair!", Some(value!({"note": "no name"}))).is_some());
        assert!(check("Pair!", Some(value!({"name": 1}))).is_some());
    }
}
