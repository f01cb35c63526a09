//! The Kubernetes manifests of `deploy/kubernetes/`: valid for the API server (strictly, no
//! unknown field) of the newest Kubernetes `kubernetes-validate` ships schemas for and of 1.30,
//! and asking for exactly what the container test (`tests/container.rs`) ran the image with
//! ([`integration_tests::deploy`]): capabilities BPF and PERFMON and nothing else, uid 65534, a
//! read-only root, no privilege escalation, the shipped seccomp profile, no host namespace.
//!
//! No cluster runs here: `kubernetes-validate` (PyPI, installed by `cargo xtask setup`) checks
//! the manifests against the API's OpenAPI schemas offline. The manifests are read with the YAML
//! parser it uses (PyYAML, through `python3`), turned into JSON.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration_tests::deploy::{
    CAPABILITIES, IMAGE, KUBERNETES_DIR, LOCALHOST_PROFILE, RUN_AS_GROUP, RUN_AS_USER,
    SECCOMP_PROFILE, seccomp_profile, workspace_root,
};
use serde_json::Value;

/// The oldest Kubernetes the manifests must suit: native sidecars (init containers with
/// `restartPolicy: Always`) are on by default from 1.29.
const OLDEST: &str = "1.30.0";

/// The container name every tcpstates container has.
const AGENT_CONTAINER: &str = "tcpstates";

/// Prints, as JSON, the newest Kubernetes version the installed kubernetes-validate has schemas
/// for (its `kubernetes-json-schema/vX.Y.Z-local` directories).
const NEWEST_PROBE: &str = "import os, kubernetes_validate as k; \
    d = os.path.join(os.path.dirname(k.__file__), 'kubernetes-json-schema'); \
    v = [tuple(int(p) for p in n[1:].split('-')[0].split('.')) for n in os.listdir(d) \
         if n.startswith('v') and n.endswith('-local')]; \
    print('.'.join(map(str, max(v))))";

/// Prints every YAML document of each file named on the command line, as one JSON array per
/// file, one file per line.
const YAML_TO_JSON: &str = "import json, sys, yaml; \
    [print(json.dumps([d for d in yaml.safe_load_all(open(f)) if d is not None])) \
     for f in sys.argv[1:]]";

/// Every `*.yaml` file of `deploy/kubernetes/`, sorted.
fn manifest_files() -> Vec<PathBuf> {
    let dir = workspace_root().join(KUBERNETES_DIR);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifest in {}", dir.display());
    files
}

/// Runs `python3 ARGS`, panicking with its stderr unless it succeeds; returns its stdout.
fn python(args: &[&str], files: &[PathBuf]) -> String {
    let output = Command::new("python3")
        .args(args)
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("run python3: {e}"));
    assert!(
        output.status.success(),
        "python3 {args:?} failed ({}): {}; run `cargo xtask setup`",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8(output.stdout).expect("python3 prints UTF-8")
}

/// Every document of every manifest, with the file it came from.
fn documents() -> Vec<(PathBuf, Value)> {
    let files = manifest_files();
    let out = python(&["-c", YAML_TO_JSON], &files);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), files.len(), "one JSON line per manifest");
    files
        .iter()
        .zip(lines)
        .flat_map(|(file, line)| {
            let docs: Vec<Value> = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", file.display()));
            docs.into_iter().map(move |doc| (file.clone(), doc))
        })
        .collect()
}

/// `kubernetes-validate` as a command: its executable on `PATH`, else the Python module.
fn kubernetes_validate() -> Command {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("kubernetes-validate"))
            .find(|candidate| candidate.is_file())
    });
    match on_path {
        Some(program) => Command::new(program),
        None => {
            let mut command = Command::new("python3");
            command.args(["-m", "kubernetes_validate"]);
            command
        }
    }
}

/// Validates every manifest strictly against `version`.
fn validate(version: &str, files: &[PathBuf]) -> Output {
    kubernetes_validate()
        .args(["--strict", "-k", version])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("run kubernetes-validate (cargo xtask setup installs it): {e}"))
}

#[test]
fn every_manifest_validates_strictly_against_the_newest_kubernetes_and_1_30() {
    let files = manifest_files();
    let documents = documents().len();
    let newest = python(&["-c", NEWEST_PROBE], &[]).trim().to_owned();
    for version in [newest.as_str(), OLDEST] {
        let output = validate(version, &files);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "kubernetes-validate --strict -k {version} failed ({}):\n{text}",
            output.status
        );
        // One "passed" line per document: none was skipped as unknown.
        let passed = text
            .lines()
            .filter(|line| line.contains(" passed "))
            .count();
        assert_eq!(passed, documents, "against {version}:\n{text}");
    }
}

#[test]
fn strict_validation_rejects_an_unknown_field() {
    // The check above is worth something only if a misspelt field fails it.
    let dir = std::env::temp_dir().join(format!("tcpstates-manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    let daemonset = workspace_root().join(KUBERNETES_DIR).join("daemonset.yaml");
    let text = std::fs::read_to_string(&daemonset).expect("read daemonset.yaml");
    let misspelt = text.replace("readOnlyRootFilesystem", "readOnlyRootFilesytem");
    assert_ne!(misspelt, text, "daemonset.yaml sets readOnlyRootFilesystem");
    let file = dir.join("daemonset.yaml");
    std::fs::write(&file, misspelt).expect("write the misspelt manifest");
    let output = validate(OLDEST, std::slice::from_ref(&file));
    std::fs::remove_dir_all(&dir).expect("remove the temporary directory");
    assert!(
        !output.status.success(),
        "a misspelt field passed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The pod spec of a workload document (`spec.template.spec`), or of a Pod (`spec`); `None` for
/// other kinds.
fn pod_spec(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Pod" => Some(&doc["spec"]),
        "DaemonSet" | "Deployment" | "StatefulSet" | "ReplicaSet" | "Job" => {
            Some(&doc["spec"]["template"]["spec"])
        }
        "CronJob" => Some(&doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

/// Every container of a pod spec: init, regular and ephemeral.
fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|key| spec[key].as_array())
        .flatten()
        .collect()
}

/// Whether `container` runs tcpstates (by name or by image).
fn is_agent(container: &Value) -> bool {
    container["name"] == AGENT_CONTAINER
        || container["image"]
            .as_str()
            .is_some_and(|image| image.contains("tcpstates"))
}

/// `value` as a set of strings; panics unless it is an array of strings.
fn string_set(value: &Value, what: &str) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what} is not a list: {value}"))
        .iter()
        .map(|item| {
            item.as_str()
                .unwrap_or_else(|| panic!("{what} holds a non-string: {item}"))
                .to_owned()
        })
        .collect()
}

/// The workloads that run tcpstates: (file, document name, pod spec, its tcpstates containers).
fn agent_workloads(docs: &[(PathBuf, Value)]) -> Vec<(String, &Value, Vec<&Value>)> {
    docs.iter()
        .filter_map(|(file, doc)| {
            let spec = pod_spec(doc)?;
            let agents: Vec<&Value> = containers(spec)
                .into_iter()
                .filter(|c| is_agent(c))
                .collect();
            let name = format!(
                "{} {}/{}",
                file.file_name().unwrap_or_default().to_string_lossy(),
                doc["kind"].as_str().unwrap_or_default(),
                doc["metadata"]["name"].as_str().unwrap_or_default()
            );
            (!agents.is_empty()).then_some((name, spec, agents))
        })
        .collect()
}

#[test]
fn every_tcpstates_container_asks_for_what_the_container_test_proved_and_no_more() {
    let docs = documents();
    let workloads = agent_workloads(&docs);
    let kinds: BTreeSet<&str> = docs
        .iter()
        .filter(|(_, doc)| {
            pod_spec(doc).is_some_and(|spec| containers(spec).iter().any(|c| is_agent(c)))
        })
        .filter_map(|(_, doc)| doc["kind"].as_str())
        .collect();
    assert!(
        kinds.contains("DaemonSet") && workloads.len() >= 2,
        "a DaemonSet and a sidecar workload run tcpstates; found {kinds:?}"
    );
    let profile_name = Path::new(SECCOMP_PROFILE).file_name();
    assert_eq!(
        Path::new(LOCALHOST_PROFILE).file_name(),
        profile_name,
        "the manifests' profile is the shipped file, installed under its own name"
    );
    let wanted_caps: BTreeSet<String> = CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
    for (name, spec, agents) in &workloads {
        for host in ["hostPID", "hostNetwork", "hostIPC"] {
            let value = &spec[host];
            assert!(
                value.is_null() || value == false,
                "{name}: {host} is {value}: the agent does not need it (README.md)"
            );
        }
        assert_eq!(
            spec["automountServiceAccountToken"], false,
            "{name}: tcpstates calls no Kubernetes API, so no token is mounted"
        );
        let host_paths: Vec<&Value> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|volume| !volume["hostPath"].is_null())
            .collect();
        assert!(
            host_paths.is_empty(),
            "{name}: hostPath volumes {host_paths:?}"
        );
        for agent in agents {
            let container = format!("{name} container {}", agent["name"]);
            assert_eq!(agent["name"], AGENT_CONTAINER, "{container}");
            assert_eq!(
                agent["image"], IMAGE,
                "{container}: the image cargo xtask image builds"
            );
            let sc = &agent["securityContext"];
            let keys: BTreeSet<&str> = sc
                .as_object()
                .unwrap_or_else(|| panic!("{container}: no securityContext"))
                .keys()
                .map(String::as_str)
                .collect();
            let allowed: BTreeSet<&str> = [
                "runAsNonRoot",
                "runAsUser",
                "runAsGroup",
                "privileged",
                "allowPrivilegeEscalation",
                "readOnlyRootFilesystem",
                "capabilities",
                "seccompProfile",
            ]
            .into();
            assert!(
                keys.is_subset(&allowed),
                "{container}: securityContext sets {:?}",
                keys.difference(&allowed).collect::<Vec<_>>()
            );
            assert_eq!(
                string_set(&sc["capabilities"]["add"], "capabilities.add"),
                wanted_caps,
                "{container}"
            );
            assert_eq!(
                string_set(&sc["capabilities"]["drop"], "capabilities.drop"),
                BTreeSet::from(["ALL".to_owned()]),
                "{container}"
            );
            assert_eq!(sc["runAsNonRoot"], true, "{container}");
            assert_eq!(sc["runAsUser"], RUN_AS_USER, "{container}");
            assert_eq!(sc["runAsGroup"], RUN_AS_GROUP, "{container}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{container}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{container}");
            assert!(
                sc["privileged"].is_null() || sc["privileged"] == false,
                "{container}: privileged"
            );
            assert_eq!(sc["seccompProfile"]["type"], "Localhost", "{container}");
            assert_eq!(
                sc["seccompProfile"]["localhostProfile"], LOCALHOST_PROFILE,
                "{container}"
            );
            for (key, what) in [("requests", "requests"), ("limits", "limits")] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        agent["resources"][key][resource].is_string(),
                        "{container}: no {resource} {what}"
                    );
                }
            }
        }
    }
}

/// The value of environment variable `name` in `container` (`value` or the downward API's
/// `fieldPath`).
fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|var| var["name"] == name)
}

#[test]
fn the_daemonset_runs_everywhere_and_exports_to_its_nodes_collector() {
    let docs = documents();
    let (_, daemonset) = docs
        .iter()
        .find(|(_, doc)| doc["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let spec = pod_spec(daemonset).expect("a pod template");
    let tolerations = spec["tolerations"].as_array().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null() && t["effect"].is_null()),
        "a toleration of every taint: {tolerations:?}"
    );
    let agent = containers(spec)
        .into_iter()
        .find(|c| is_agent(c))
        .expect("a tcpstates container");
    let field = |name: &str| {
        env(agent, name).and_then(|var| var["valueFrom"]["fieldRef"]["fieldPath"].as_str())
    };
    assert_eq!(field("HOST_IP"), Some("status.hostIP"));
    assert_eq!(field("NODE_NAME"), Some("spec.nodeName"));
    let value = |name: &str| env(agent, name).and_then(|var| var["value"].as_str());
    assert_eq!(
        value("OTEL_EXPORTER_OTLP_ENDPOINT"),
        Some("http://$(HOST_IP):4317")
    );
    assert!(
        value("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| attrs
            .split(',')
            .any(|kv| kv == "k8s.node.name=$(NODE_NAME)")),
        "k8s.node.name in OTEL_RESOURCE_ATTRIBUTES"
    );
    let args = string_list(&agent["args"]);
    assert!(args.iter().any(|a| a == "--otlp"), "{args:?}");
    assert!(
        !args.iter().any(|a| a == "--netns"),
        "the node agent traces every namespace: {args:?}"
    );
}

/// `value` as a list of strings (empty if absent).
fn string_list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_sidecar_traces_only_its_pods_network_namespace() {
    let docs = documents();
    let sidecars: Vec<&Value> = docs
        .iter()
        .filter(|(_, doc)| doc["kind"] != "DaemonSet")
        .filter_map(|(_, doc)| pod_spec(doc))
        .filter(|spec| {
            let all = containers(spec);
            all.iter().any(|c| is_agent(c)) && all.iter().any(|c| !is_agent(c))
        })
        .collect();
    assert!(
        !sidecars.is_empty(),
        "a pod with an application and tcpstates"
    );
    for spec in sidecars {
        let agent = containers(spec)
            .into_iter()
            .find(|c| is_agent(c))
            .expect("tcpstates");
        let args = string_list(&agent["args"]);
        let netns = args
            .windows(2)
            .find(|pair| pair[0] == "--netns")
            .map(|pair| pair[1].as_str());
        assert_eq!(netns, Some("/proc/self/ns/net"), "{args:?}");
        assert!(args.iter().any(|a| a == "--otlp"), "{args:?}");
    }
}

#[test]
fn the_shipped_seccomp_profile_allows_bpf_and_perf_event_open_unconditionally() {
    let path = seccomp_profile();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let profile: Value = serde_json::from_str(&text).expect("the profile is JSON");
    assert_eq!(
        profile["defaultAction"], "SCMP_ACT_ERRNO",
        "a default-deny profile"
    );
    for syscall in ["bpf", "perf_event_open"] {
        let rules: Vec<&Value> = profile["syscalls"]
            .as_array()
            .expect("syscalls")
            .iter()
            .filter(|rule| string_list(&rule["names"]).iter().any(|n| n == syscall))
            .collect();
        assert_eq!(rules.len(), 1, "one rule names {syscall}: {rules:?}");
        let rule = rules[0];
        assert_eq!(rule["action"], "SCMP_ACT_ALLOW", "{syscall}");
        let empty = |v: &Value| {
            v.is_null()
                || v.as_array().is_some_and(Vec::is_empty)
                || v.as_object().is_some_and(serde_json::Map::is_empty)
        };
        assert!(
            empty(&rule["args"]) && empty(&rule["includes"]) && empty(&rule["excludes"]),
            "{syscall} is allowed whatever the capabilities and arguments: {rule}"
        );
    }
}
