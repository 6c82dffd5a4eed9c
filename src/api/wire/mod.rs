//! Wire types of the two public API shapes, field for field as the official SDKs define them:
//! OpenRouter's Image API (`/api/v1/images*`, primary) and OpenAI's Images API (`/v1/*`).
//!
//! Only serde + `utoipa::ToSchema` definitions and small constructors live here; what a request
//! means is decided in `crate::domain::request`. Request types are strict
//! (`deny_unknown_fields`), so a stray field is a deserialisation error that names it.

/// A string enum of the wire: serde names, an OpenAPI enum schema, `as_str()` and `ALL`.
/// `$value` is a `tt` so the literal reaches serde and utoipa untouched.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:tt),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash,
            serde::Serialize, serde::Deserialize, utoipa::ToSchema,
        )]
        $vis enum $name {
            $($(#[$vmeta])* #[serde(rename = $value)] $variant),+
        }

        impl $name {
            /// Every value, in the SDK's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub mod openai;
pub mod openrouter;

#[cfg(test)]
pub(crate) mod test_support {
    use serde_json::Value;

    /// Asserts `value` (an object) has every key of `keys`, naming `what` on failure.
    pub fn assert_keys(value: &Value, what: &str, keys: &[&str]) {
        let Some(object) = value.as_object() else {
            panic!("{what} is not an object: {value}");
        };
        for key in keys {
            assert!(
                object.contains_key(*key),
                "{what} lacks required key {key:?}: {value}"
            );
        }
    }

    /// Asserts `value[key]` is a JSON integer (not a float).
    pub fn assert_integers(value: &Value, what: &str, keys: &[&str]) {
        for key in keys {
            assert!(
                value.get(*key).is_some_and(|v| v.is_u64() || v.is_i64()),
                "{what}.{key} must be an integer: {value}"
            );
        }
    }
}

#[cfg(test)]
mod schema_tests {
    use std::collections::BTreeMap;

    use serde_json::Value;
    use utoipa::openapi::{RefOr, Schema};
    use utoipa::ToSchema;

    use super::{openai, openrouter};

    /// The schema of `T` and of everything it references, by name, as JSON.
    fn collect<T: ToSchema>(into: &mut BTreeMap<String, Value>) {
        let mut deps: Vec<(String, RefOr<Schema>)> = Vec::new();
        T::schemas(&mut deps);
        deps.push((T::name().to_string(), T::schema()));
        for (name, schema) in deps {
            into.insert(name, serde_json::to_value(schema).expect("schema json"));
        }
    }

    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    fn all_schemas() -> BTreeMap<String, Value> {
        let mut s = BTreeMap::new();
        collect::<openrouter::ImageGenerationRequest>(&mut s);
        collect::<openrouter::LocalProviderOptions>(&mut s);
        collect::<openrouter::ImageGenerationResponse>(&mut s);
        collect::<openrouter::ImageStreamEvent>(&mut s);
        collect::<openrouter::ImageModelsListResponse>(&mut s);
        collect::<openrouter::ImageModelEndpointsResponse>(&mut s);
        collect::<openrouter::ErrorResponse>(&mut s);
        collect::<openai::ImageGenerateRequest>(&mut s);
        collect::<openai::ImagesResponse>(&mut s);
        collect::<openai::ImageGenStreamEvent>(&mut s);
        collect::<openai::ModelList>(&mut s);
        collect::<openai::ErrorResponse>(&mut s);
        s
    }

    #[test]
    fn schemas_are_complete_and_describe_the_fields() {
        let schemas = all_schemas();
        if std::env::var("PRINT_SCHEMAS").is_ok() {
            println!(
                "{}",
                serde_json::to_string_pretty(&schemas).unwrap_or_default()
            );
        }
        for (name, schema) in &schemas {
            let mut found = Vec::new();
            refs(schema, &mut found);
            for r in found {
                let target = r.trim_start_matches("#/components/schemas/");
                assert!(
                    schemas.contains_key(target),
                    "{name} references missing {r}"
                );
            }
        }
        let request = &schemas["ImageGenerationRequest"];
        let required: Vec<&str> = request["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(required, ["model", "prompt"]);
        assert_eq!(request["additionalProperties"], Value::Bool(false));
        let prompt_doc = request["properties"]["prompt"]["description"].as_str();
        assert_eq!(prompt_doc, Some("Text description of the desired image."));
        let ratios = schemas["AspectRatio"]["enum"].as_array().expect("enum");
        assert!(ratios.iter().any(|v| v == "2.35:1") && ratios.iter().any(|v| v == "9:19.5"));
        let usage_required = schemas["ImageGenerationUsage"]["required"].to_string();
        for key in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            assert!(usage_required.contains(key), "{usage_required}");
        }
        let endpoint_required = schemas["ImageEndpoint"]["required"].to_string();
        assert!(
            endpoint_required.contains("provider_tag"),
            "{endpoint_required}"
        );
        let openai_request = &schemas["ImageGenerateRequest"];
        assert_eq!(openai_request["additionalProperties"], Value::Bool(false));
        assert_eq!(openai_request["required"].to_string(), "[\"prompt\"]");
        let error_required = schemas["ErrorObject"]["required"].to_string();
        assert!(
            error_required.contains("param") && error_required.contains("code"),
            "{error_required}"
        );
    }
}
