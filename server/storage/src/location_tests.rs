//! Location parsing, redaction and the S3 environment rules.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Env {
    Env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn s3(pairs: &[(&str, &str)], key: AmazonS3ConfigKey) -> Option<String> {
    s3_builder("models", &env(pairs)).get_config_value(&key)
}

fn none() -> Arc<Redactor> {
    Arc::new(Redactor::default())
}

fn client(key: ClientConfigKey) -> AmazonS3ConfigKey {
    AmazonS3ConfigKey::Client(key)
}

#[test]
fn parses_each_scheme() {
    assert_eq!(parse("/srv/models").unwrap(), Location::Local("/srv/models".into()));
    assert_eq!(parse("relative/dir").unwrap(), Location::Local("relative/dir".into()));
    assert_eq!(parse("file:///srv/models").unwrap(), Location::Local("/srv/models".into()));
    assert_eq!(parse("s3://bucket/a/b/").unwrap(), Location::S3 { bucket: "bucket".into(), prefix: "a/b".into() });
    assert_eq!(parse("s3://bucket").unwrap(), Location::S3 { bucket: "bucket".into(), prefix: String::new() });
    assert_eq!(parse("gs://b/p").unwrap(), Location::Gcs { bucket: "b".into(), prefix: "p".into() });
    assert_eq!(
        parse("az://c/p/q").unwrap(),
        Location::Azure { account: None, container: "c".into(), prefix: "p/q".into(), sas: vec![] }
    );
    assert_eq!(
        parse("https://acct.blob.core.windows.net/c/p?sv=2024&sig=SECRET").unwrap(),
        Location::Azure {
            account: Some("acct".into()),
            container: "c".into(),
            prefix: "p".into(),
            sas: vec![("sv".into(), "2024".into()), ("sig".into(), "SECRET".into())],
        }
    );
    let Location::Http { base, name, archive } = parse("https://host/dir/sub/model.tar.gz?token=x").unwrap() else {
        panic!("not http")
    };
    assert_eq!(
        (base.as_str(), name.as_str(), archive),
        ("https://host/dir/sub?token=x", "model.tar.gz", Some(ArchiveKind::TarGz))
    );
    let Location::Http { base, name, archive } = parse("http://host/model%20v1.onnx").unwrap() else { panic!() };
    assert_eq!((base.as_str(), name.as_str(), archive), ("http://host/", "model v1.onnx", None));
    assert!(matches!(parse("http://host/m.tgz").unwrap(), Location::Http { archive: Some(ArchiveKind::TarGz), .. }));
    assert!(matches!(parse("http://host/m.TAR").unwrap(), Location::Http { archive: Some(ArchiveKind::Tar), .. }));
    assert!(matches!(parse("http://host/m.zip").unwrap(), Location::Http { archive: Some(ArchiveKind::Zip), .. }));
}

#[test]
fn rejects_unknown_schemes_naming_the_accepted_ones() {
    for bad in ["ftp://host/x", "hdfs://nn/path", "s3:///nobucket", "https://host/dir/", ""] {
        let error = parse(bad).expect_err(bad);
        assert!(matches!(error, StorageError::InvalidLocation { .. }), "{bad}: {error}");
    }
    let message = parse("ftp://host/x").unwrap_err().to_string();
    assert!(message.contains("s3://") && message.contains("gs://") && message.contains("az://"), "{message}");
}

#[test]
fn redacts_credentials_and_queries() {
    assert_eq!(
        redact("https://acct.blob.core.windows.net/c/p?sv=1&sig=SECRET"),
        "https://acct.blob.core.windows.net/c/p"
    );
    assert_eq!(redact("https://user:pass@host/m.onnx"), "https://host/m.onnx");
    assert_eq!(redact("http://token@host:8080/a.zip?x=1#frag"), "http://host:8080/a.zip");
    assert_eq!(redact("s3://bucket/prefix/"), "s3://bucket/prefix");
    assert_eq!(redact("/srv/models/"), "/srv/models");
    assert_eq!(redact("/"), "/");
    let error = parse("ftp://me:hunter2@host/x?sig=SECRET").unwrap_err().to_string();
    assert!(!error.contains("hunter2") && !error.contains("SECRET"), "{error}");
}

#[test]
fn s3_defaults_region_and_reads_aws_vars() {
    assert_eq!(s3(&[], AmazonS3ConfigKey::Region).as_deref(), Some("us-east-1"));
    assert_eq!(s3(&[("AWS_REGION", "eu-west-1")], AmazonS3ConfigKey::Region).as_deref(), Some("eu-west-1"));
    assert_eq!(s3(&[("AWS_DEFAULT_REGION", "ap-south-1")], AmazonS3ConfigKey::Region).as_deref(), Some("ap-south-1"));
    assert_eq!(s3(&[], AmazonS3ConfigKey::Bucket).as_deref(), Some("models"));
    let vars = [("AWS_ENDPOINT_URL", "http://127.0.0.1:5000/"), ("AWS_ACCESS_KEY_ID", "AKIA")];
    assert_eq!(s3(&vars, AmazonS3ConfigKey::Endpoint).as_deref(), Some("http://127.0.0.1:5000"));
    assert_eq!(s3(&vars, client(ClientConfigKey::AllowHttp)).as_deref(), Some("true"));
    assert_eq!(s3(&vars, AmazonS3ConfigKey::VirtualHostedStyleRequest).as_deref(), Some("false"));
    assert_eq!(s3(&[("AWS_ENDPOINT", "https://minio")], AmazonS3ConfigKey::Endpoint).as_deref(), Some("https://minio"));
    assert_eq!(s3(&[("AWS_ALLOW_HTTP", "true")], client(ClientConfigKey::AllowHttp)).as_deref(), Some("true"));
    assert_eq!(s3(&[], client(ClientConfigKey::AllowHttp)).as_deref(), Some("false"));
}

#[test]
fn s3_kserve_vars() {
    let plain = [("S3_ENDPOINT", "minio.local:9000"), ("S3_USE_HTTPS", "0")];
    assert_eq!(s3(&plain, AmazonS3ConfigKey::Endpoint).as_deref(), Some("http://minio.local:9000"));
    assert_eq!(s3(&plain, client(ClientConfigKey::AllowHttp)).as_deref(), Some("true"));
    let tls = [("S3_ENDPOINT", "minio.local:9000")];
    assert_eq!(s3(&tls, AmazonS3ConfigKey::Endpoint).as_deref(), Some("https://minio.local:9000"));
    assert_eq!(s3(&tls, client(ClientConfigKey::AllowHttp)).as_deref(), Some("false"));
    let with_scheme = [("S3_ENDPOINT", "http://10.0.0.1:9000"), ("S3_USE_HTTPS", "1")];
    assert_eq!(s3(&with_scheme, AmazonS3ConfigKey::Endpoint).as_deref(), Some("http://10.0.0.1:9000"));
    // AWS_ENDPOINT_URL wins over S3_ENDPOINT.
    let both = [("S3_ENDPOINT", "a:1"), ("AWS_ENDPOINT_URL", "https://b")];
    assert_eq!(s3(&both, AmazonS3ConfigKey::Endpoint).as_deref(), Some("https://b"));
    let insecure = [("S3_VERIFY_SSL", "0")];
    assert_eq!(s3(&insecure, client(ClientConfigKey::AllowInvalidCertificates)).as_deref(), Some("true"));
    assert_eq!(s3(&[], client(ClientConfigKey::AllowInvalidCertificates)).as_deref(), Some("false"));
    assert_eq!(s3(&[("AWS_ANONYMOUS_CREDENTIAL", "true")], AmazonS3ConfigKey::SkipSignature).as_deref(), Some("true"));
    assert_eq!(s3(&[], AmazonS3ConfigKey::SkipSignature).as_deref(), Some("false"));
}

#[test]
fn azure_url_sets_account_container_and_sas() {
    let builder = azure_builder(Some("acct"), "c", &[("sig".into(), "x".into())], &env(&[]));
    assert_eq!(builder.get_config_value(&AzureConfigKey::AccountName).as_deref(), Some("acct"));
    assert_eq!(builder.get_config_value(&AzureConfigKey::ContainerName).as_deref(), Some("c"));
    let store = build_store(
        &parse("https://acct.blob.core.windows.net/c/p?sig=SECRET").unwrap(),
        "label",
        &env(&[]),
        &none(),
        &Pushback::default(),
    );
    assert!(store.is_ok(), "{:?}", store.err());
}

#[test]
fn gcs_and_azure_read_the_given_env_not_the_process() {
    let vars = env(&[("GOOGLE_BUCKET", "ignored"), ("SERVICE_ACCOUNT", "/sa.json"), ("GOOGLE_PROXY_URL", "http://p")]);
    let gcs = gcs_builder("models", &vars);
    assert_eq!(gcs.get_config_value(&GoogleConfigKey::Bucket).as_deref(), Some("models"), "the URL's bucket wins");
    assert_eq!(gcs.get_config_value(&GoogleConfigKey::ServiceAccount).as_deref(), Some("/sa.json"));
    let vars = env(&[("AZURE_STORAGE_ACCOUNT_NAME", "fromenv"), ("IDENTITY_ENDPOINT", "http://msi")]);
    let azure = azure_builder(None, "c", &[], &vars);
    assert_eq!(azure.get_config_value(&AzureConfigKey::AccountName).as_deref(), Some("fromenv"));
    assert_eq!(azure.get_config_value(&AzureConfigKey::MsiEndpoint).as_deref(), Some("http://msi"));
    let url_wins = azure_builder(Some("acct"), "c", &[], &vars);
    assert_eq!(url_wins.get_config_value(&AzureConfigKey::AccountName).as_deref(), Some("acct"));
}

#[test]
fn builds_stores_without_io() {
    for location in ["s3://b/p", "gs://b/p", "http://host/m.onnx"] {
        let env = env(&[("AWS_ACCESS_KEY_ID", "AKIA"), ("AWS_SECRET_ACCESS_KEY", "shh")]);
        let store = build_store(&parse(location).unwrap(), location, &env, &none(), &Pushback::default());
        assert!(store.is_ok(), "{location}: {:?}", store.err());
    }
}

#[test]
fn cache_key_is_stable_fnv1a() {
    assert_eq!(cache_key(""), "cbf29ce484222325");
    assert_eq!(cache_key("a"), "af63dc4c8601ec8c");
    assert_eq!(cache_key("s3://b/p").len(), 16);
}

#[test]
fn only_aws_computes_the_etags_it_sends() {
    use crate::digest::Etags;
    assert_eq!(s3_etags("models", None), Etags::ComputedByStore);
    assert_eq!(s3_etags("models", Some("https://s3.eu-west-1.amazonaws.com")), Etags::ComputedByStore);
    assert_eq!(s3_etags("models", Some("http://minio:9000")), Etags::Convention);
    assert_eq!(s3_etags("models", Some("https://acct.r2.cloudflarestorage.com")), Etags::Convention);
    assert_eq!(s3_etags("models--use1-az4--x-s3", None), Etags::Ignored, "a directory bucket's ETags are random");
    assert_eq!(s3_etags("models--usw2-lax1-az1--xa-s3", None), Etags::Ignored, "and a Local Zone one's");
}
