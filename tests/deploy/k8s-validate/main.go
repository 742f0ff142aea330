// k8s-validate renders kustomizations (sigs.k8s.io/kustomize/api, what `kubectl apply -k` uses)
// and decodes every resource strictly into the typed Kubernetes API structs (k8s.io/api):
// an unknown field, a wrong type or an unparsable quantity is an error. Then it checks what
// moonring's deployment relies on. No cluster and no downloaded JSON schemas are needed.
//
//	cd tests/deploy/k8s-validate && go run .    (default: deploy/k8s/base and deploy/k8s/gpu)
//
// Prints one line per check and "N passed, N failed"; exits 1 on any failure.
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

var passed, failed int

func check(name string, ok bool, detail string) {
	if ok {
		passed++
		fmt.Printf("  ok   %s\n", name)
		return
	}
	failed++
	fmt.Printf("  FAIL %s: %s\n", name, detail)
}

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

func envValue(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

func selects(sel *metav1.LabelSelector, set labels.Set) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && !s.Empty() && s.Matches(set)
}

// jobOnly: the policy selects the rank pods, restricts ingress, and every rule admits only pods
// of the job (no namespace or IP blocks) on the named http and data ports.
func jobOnly(p networkingv1.NetworkPolicy, rankLabels labels.Set) bool {
	if !selects(&p.Spec.PodSelector, rankLabels) || len(p.Spec.Ingress) == 0 {
		return false
	}
	ingress := false
	for _, t := range p.Spec.PolicyTypes {
		ingress = ingress || t == networkingv1.PolicyTypeIngress
	}
	for _, rule := range p.Spec.Ingress {
		if len(rule.From) == 0 || len(rule.Ports) != 2 {
			return false
		}
		for _, peer := range rule.From {
			if peer.PodSelector == nil || peer.NamespaceSelector != nil || peer.IPBlock != nil || !selects(peer.PodSelector, rankLabels) {
				return false
			}
		}
		names := map[string]bool{}
		for _, port := range rule.Ports {
			if port.Port != nil {
				names[port.Port.String()] = true
			}
		}
		if !names["http"] || !names["data"] {
			return false
		}
	}
	return ingress
}

func validateDir(dir string) {
	fmt.Printf("== %s\n", dir)
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resMap, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		check("kustomize build", false, err.Error())
		return
	}
	out, err := resMap.AsYaml()
	check("kustomize build", err == nil, fmt.Sprint(err))

	var services []corev1.Service
	var sets []appsv1.StatefulSet
	var pdbs []policyv1.PodDisruptionBudget
	var policies []networkingv1.NetworkPolicy
	for _, doc := range bytes.Split(out, []byte("\n---\n")) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var tm typeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			check("parse", false, err.Error())
			continue
		}
		name := tm.APIVersion + " " + tm.Kind
		switch name {
		case "v1 Service":
			var s corev1.Service
			err := yaml.UnmarshalStrict(doc, &s)
			check("strict decode Service "+s.Name, err == nil, fmt.Sprint(err))
			services = append(services, s)
		case "apps/v1 StatefulSet":
			var s appsv1.StatefulSet
			err := yaml.UnmarshalStrict(doc, &s)
			check("strict decode StatefulSet "+s.Name, err == nil, fmt.Sprint(err))
			sets = append(sets, s)
		case "policy/v1 PodDisruptionBudget":
			var p policyv1.PodDisruptionBudget
			err := yaml.UnmarshalStrict(doc, &p)
			check("strict decode PodDisruptionBudget "+p.Name, err == nil, fmt.Sprint(err))
			pdbs = append(pdbs, p)
		case "networking.k8s.io/v1 NetworkPolicy":
			var p networkingv1.NetworkPolicy
			err := yaml.UnmarshalStrict(doc, &p)
			check("strict decode NetworkPolicy "+p.Name, err == nil, fmt.Sprint(err))
			policies = append(policies, p)
		default:
			check("known kind "+name, false, "no typed check for this kind")
		}
	}
	check("one StatefulSet and one Service", len(sets) == 1 && len(services) == 1, fmt.Sprintf("%d, %d", len(sets), len(services)))
	if len(sets) != 1 || len(services) != 1 {
		return
	}
	ss, svc := sets[0], services[0]
	spec := ss.Spec
	pod := spec.Template.Spec

	check("headless Service (clusterIP None)", svc.Spec.ClusterIP == corev1.ClusterIPNone, svc.Spec.ClusterIP)
	check("Service publishes not-ready addresses (rendezvous before readiness)", svc.Spec.PublishNotReadyAddresses, "false")
	check("StatefulSet.serviceName is the headless Service", spec.ServiceName == svc.Name, spec.ServiceName)
	check("podManagementPolicy Parallel (pod 0 is Ready only after all ranks join)",
		spec.PodManagementPolicy == appsv1.ParallelPodManagement, string(spec.PodManagementPolicy))
	sel := spec.Selector.MatchLabels
	matches := len(sel) > 0
	for k, v := range sel {
		if spec.Template.Labels[k] != v || svc.Spec.Selector[k] != v {
			matches = false
		}
	}
	check("selector matches pod labels and Service selector", matches, fmt.Sprint(sel))
	check("one container", len(pod.Containers) == 1, fmt.Sprint(len(pod.Containers)))
	if len(pod.Containers) != 1 {
		return
	}
	c := pod.Containers[0]
	replicas := int32(1)
	if spec.Replicas != nil {
		replicas = *spec.Replicas
	}
	ws, _ := envValue(c, "WORLD_SIZE")
	check("WORLD_SIZE equals replicas", ws == fmt.Sprint(replicas), ws+" vs "+fmt.Sprint(replicas))
	fromHost, _ := envValue(c, "MOONRING_RANK_FROM_HOSTNAME")
	podName := false
	for _, e := range c.Env {
		if e.Name == "POD_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name" {
			podName = true
		}
	}
	check("rank from the pod ordinal (POD_NAME + MOONRING_RANK_FROM_HOSTNAME=1)", fromHost == "1" && podName, fromHost)
	master, _ := envValue(c, "MASTER_ADDR")
	check("MASTER_ADDR is pod 0 behind the headless Service",
		strings.HasPrefix(master, ss.Name+"-0."+svc.Name), master)
	adv, _ := envValue(c, "MOONRING_ADVERTISE_HOST")
	podIP := false
	for _, e := range c.Env {
		if e.Name == "MOONRING_ADVERTISE_HOST" {
			break
		}
		if e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP" {
			podIP = true
		}
	}
	check("ranks advertise the pod IP (POD_IP defined before its use)", adv == "$(POD_IP)" && podIP, adv)
	port := int32(0)
	for _, p := range c.Ports {
		if p.Name == "http" {
			port = p.ContainerPort
		}
	}
	mp, _ := envValue(c, "MOONRING_PORT")
	mport, _ := envValue(c, "MASTER_PORT")
	check("control-plane port: container port = MOONRING_PORT = MASTER_PORT", port != 0 && mp == fmt.Sprint(port) && mport == mp, fmt.Sprint(port, " ", mp, " ", mport))
	svcPortOk := len(svc.Spec.Ports) == 1 && svc.Spec.Ports[0].TargetPort == intstr.FromString("http")
	check("Service targets the http port", svcPortOk, fmt.Sprint(svc.Spec.Ports))

	rp := c.ReadinessProbe
	check("readinessProbe GET /health", rp != nil && rp.HTTPGet != nil && rp.HTTPGet.Path == "/health", fmt.Sprint(rp))
	lp := c.LivenessProbe
	check("livenessProbe GET /livez (distinct from readiness)", lp != nil && lp.HTTPGet != nil && lp.HTTPGet.Path == "/livez", fmt.Sprint(lp))
	sp := c.StartupProbe
	check("startupProbe GET /livez", sp != nil && sp.HTTPGet != nil && sp.HTTPGet.Path == "/livez", fmt.Sprint(sp))
	req := c.Resources.Requests
	check("cpu and memory requests", !req.Cpu().IsZero() && !req.Memory().IsZero(), fmt.Sprint(req))
	lim := c.Resources.Limits
	check("cpu and memory limits", !lim.Cpu().IsZero() && !lim.Memory().IsZero(), fmt.Sprint(lim))
	check("pinned image tag (not :latest, not untagged)", strings.Contains(c.Image, ":") && !strings.HasSuffix(c.Image, ":latest"), c.Image)
	dataPort := int32(0)
	for _, p := range c.Ports {
		if p.Name == "data" {
			dataPort = p.ContainerPort
		}
	}
	dp, _ := envValue(c, "MOONRING_DATA_PORT")
	check("data-plane port: container port data = MOONRING_DATA_PORT", dataPort != 0 && dp == fmt.Sprint(dataPort), fmt.Sprint(dataPort, " ", dp))
	ann := spec.Template.Annotations
	check("scrape annotations (prometheus.io/scrape, port, path)", ann["prometheus.io/scrape"] == "true" && ann["prometheus.io/port"] == fmt.Sprint(port) && ann["prometheus.io/path"] == "/metrics", fmt.Sprint(ann))
	podLabels := labels.Set(spec.Template.Labels)
	check("one PodDisruptionBudget selecting the ranks, at most one unavailable", len(pdbs) == 1 && pdbs[0].Spec.Selector != nil &&
		selects(pdbs[0].Spec.Selector, podLabels) && pdbs[0].Spec.MaxUnavailable != nil && pdbs[0].Spec.MaxUnavailable.IntValue() == 1, fmt.Sprint(pdbs))
	check("one NetworkPolicy: ingress to the ranks only from the job's pods, on http and data only", len(policies) == 1 && jobOnly(policies[0], podLabels), fmt.Sprint(policies))
	sc := c.SecurityContext
	check("non-root, no privilege escalation, read-only root fs",
		pod.SecurityContext != nil && pod.SecurityContext.RunAsNonRoot != nil && *pod.SecurityContext.RunAsNonRoot &&
			sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation &&
			sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem, "")

	gpu := c.Resources.Limits[corev1.ResourceName("nvidia.com/gpu")]
	if strings.Contains(dir, "gpu") {
		one := resource.MustParse("1")
		check("GPU variant: nvidia.com/gpu limit 1 (and request)", gpu.Cmp(one) == 0 &&
			c.Resources.Requests.Name("nvidia.com/gpu", resource.DecimalSI).Cmp(one) == 0, gpu.String())
		check("GPU variant keeps the base's probes and env", rp != nil && lp != nil && ws != "", "")
		dev, _ := envValue(c, "MOONRING_DEVICE")
		check("GPU variant: MOONRING_DEVICE=cuda", dev == "cuda", dev)
	} else {
		check("CPU variant: no GPU", gpu.IsZero(), gpu.String())
	}
}

func main() {
	// render DIR: print the kustomization's resources as YAML (for kubeconform and kube-score)
	if len(os.Args) == 3 && os.Args[1] == "render" {
		resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), os.Args[2])
		if err == nil {
			var out []byte
			if out, err = resMap.AsYaml(); err == nil {
				os.Stdout.Write(out)
				return
			}
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dirs := os.Args[1:]
	if len(dirs) == 0 {
		// Default: the repository's two variants, found from the current directory upwards.
		base := "."
		for i := 0; i < 4; i++ {
			if st, err := os.Stat(filepath.Join(base, "deploy", "k8s", "base")); err == nil && st.IsDir() {
				break
			}
			base = filepath.Join(base, "..")
		}
		dirs = []string{filepath.Join(base, "deploy/k8s/base"), filepath.Join(base, "deploy/k8s/gpu")}
	}
	for _, d := range dirs {
		validateDir(d)
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
