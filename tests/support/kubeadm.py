"""
Real-world kube-controller-manager configurations, as the tools that write them do.

KUBEADM_MANIFEST is /etc/kubernetes/manifests/kube-controller-manager.yaml as kubeadm
(v1.29+, `ArgumentsToCommand`: flags sorted by name) writes it for a ClusterConfiguration
without networking.podSubnet; KUBEADM_MANIFEST_POD_SUBNET is the same with
`podSubnet: 10.244.0.0/16` (kubeadm then adds --allocate-node-cidrs=true, --cluster-cidr
and --service-cluster-ip-range from serviceSubnet).

The V1BETA* documents are ClusterConfigurations as kubeadm stores them in ConfigMap
kube-system/kubeadm-config (Go's marshalling: keys sorted, empty components as {}):
V1BETA4_PODNET is what kubeadm 1.36.2 writes for podnet's own init configuration
(`kubeadm config migrate` of it, the same marshalling as the upload); the others are
kubeadm 1.30 (v1beta3) and 1.31+ (v1beta4) clusters made without podnet, one with
kubespray-style extraArgs.
"""

from __future__ import annotations

KUBEADM_COMMAND = [
    "kube-controller-manager",
    "--authentication-kubeconfig=/etc/kubernetes/controller-manager.conf",
    "--authorization-kubeconfig=/etc/kubernetes/controller-manager.conf",
    "--bind-address=127.0.0.1",
    "--client-ca-file=/etc/kubernetes/pki/ca.crt",
    "--cluster-name=kubernetes",
    "--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt",
    "--cluster-signing-key-file=/etc/kubernetes/pki/ca.key",
    "--controllers=*,bootstrapsigner,tokencleaner",
    "--kubeconfig=/etc/kubernetes/controller-manager.conf",
    "--leader-elect=true",
    "--requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt",
    "--root-ca-file=/etc/kubernetes/pki/ca.crt",
    "--service-account-private-key-file=/etc/kubernetes/pki/sa.key",
    "--use-service-account-credentials=true",
]

KUBEADM_COMMAND_POD_SUBNET = sorted(
    KUBEADM_COMMAND[1:] + ["--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/16",
                           "--service-cluster-ip-range=10.96.0.0/12"])
KUBEADM_COMMAND_POD_SUBNET.insert(0, "kube-controller-manager")

# kubespray: kubeadm plus controllerManager.extraArgs from its defaults
# (kube_pods_subnet 10.233.64.0/18, kube_service_addresses 10.233.0.0/18, node prefix 24).
KUBESPRAY_COMMAND = [
    "kube-controller-manager",
    "--allocate-node-cidrs=true",
    "--authentication-kubeconfig=/etc/kubernetes/controller-manager.conf",
    "--authorization-kubeconfig=/etc/kubernetes/controller-manager.conf",
    "--bind-address=0.0.0.0",
    "--client-ca-file=/etc/kubernetes/ssl/ca.crt",
    "--cluster-cidr=10.233.64.0/18",
    "--cluster-name=cluster.local",
    "--cluster-signing-cert-file=/etc/kubernetes/ssl/ca.crt",
    "--cluster-signing-key-file=/etc/kubernetes/ssl/ca.key",
    "--configure-cloud-routes=false",
    "--controllers=*,bootstrapsigner,tokencleaner",
    "--kubeconfig=/etc/kubernetes/controller-manager.conf",
    "--leader-elect=true",
    "--leader-elect-lease-duration=15s",
    "--leader-elect-renew-deadline=10s",
    "--node-cidr-mask-size=24",
    "--node-monitor-grace-period=40s",
    "--node-monitor-period=5s",
    "--profiling=False",
    "--requestheader-client-ca-file=/etc/kubernetes/ssl/front-proxy-ca.crt",
    "--root-ca-file=/etc/kubernetes/ssl/ca.crt",
    "--service-account-private-key-file=/etc/kubernetes/ssl/sa.key",
    "--service-cluster-ip-range=10.233.0.0/18",
    "--terminated-pod-gc-threshold=12500",
    "--use-service-account-credentials=true",
]


def kubeadm_manifest(command: list[str] = KUBEADM_COMMAND,
                     image: str = "registry.k8s.io/kube-controller-manager:v1.31.4") -> str:
    flags = "".join(f"    - {token}\n" for token in command)
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  creationTimestamp: null
  labels:
    component: kube-controller-manager
    tier: control-plane
  name: kube-controller-manager
  namespace: kube-system
spec:
  containers:
  - command:
{flags}    image: {image}
    imagePullPolicy: IfNotPresent
    livenessProbe:
      failureThreshold: 8
      httpGet:
        host: 127.0.0.1
        path: /healthz
        port: 10257
        scheme: HTTPS
      initialDelaySeconds: 10
      periodSeconds: 10
      timeoutSeconds: 15
    name: kube-controller-manager
    resources:
      requests:
        cpu: 200m
    startupProbe:
      failureThreshold: 24
      httpGet:
        host: 127.0.0.1
        path: /healthz
        port: 10257
        scheme: HTTPS
      initialDelaySeconds: 10
      periodSeconds: 10
      timeoutSeconds: 15
    volumeMounts:
    - mountPath: /etc/ssl/certs
      name: ca-certs
      readOnly: true
    - mountPath: /etc/ca-certificates
      name: etc-ca-certificates
      readOnly: true
    - mountPath: /usr/libexec/kubernetes/kubelet-plugins/volume/exec
      name: flexvolume-dir
    - mountPath: /etc/kubernetes/pki
      name: k8s-certs
      readOnly: true
    - mountPath: /etc/kubernetes/controller-manager.conf
      name: kubeconfig
      readOnly: true
    - mountPath: /usr/local/share/ca-certificates
      name: usr-local-share-ca-certificates
      readOnly: true
    - mountPath: /usr/share/ca-certificates
      name: usr-share-ca-certificates
      readOnly: true
  hostNetwork: true
  priority: 2000001000
  priorityClassName: system-node-critical
  securityContext:
    seccompProfile:
      type: RuntimeDefault
  volumes:
  - hostPath:
      path: /etc/ssl/certs
      type: DirectoryOrCreate
    name: ca-certs
  - hostPath:
      path: /etc/ca-certificates
      type: DirectoryOrCreate
    name: etc-ca-certificates
  - hostPath:
      path: /usr/libexec/kubernetes/kubelet-plugins/volume/exec
      type: DirectoryOrCreate
    name: flexvolume-dir
  - hostPath:
      path: /etc/kubernetes/pki
      type: DirectoryOrCreate
    name: k8s-certs
  - hostPath:
      path: /etc/kubernetes/controller-manager.conf
      type: FileOrCreate
    name: kubeconfig
  - hostPath:
      path: /usr/local/share/ca-certificates
      type: DirectoryOrCreate
    name: usr-local-share-ca-certificates
  - hostPath:
      path: /usr/share/ca-certificates
      type: DirectoryOrCreate
    name: usr-share-ca-certificates
status: {{}}
"""


KUBEADM_MANIFEST = kubeadm_manifest()
KUBEADM_MANIFEST_POD_SUBNET = kubeadm_manifest(KUBEADM_COMMAND_POD_SUBNET)

# Kubernetes The Hard Way's unit (kelseyhightower/kubernetes-the-hard-way), written with
# "--flag value" forms in places, as hand-written units often are.
HARD_WAY_UNIT = """\
[Unit]
Description=Kubernetes Controller Manager
Documentation=https://github.com/kubernetes/kubernetes

[Service]
ExecStart=/usr/local/bin/kube-controller-manager \\
  --bind-address=0.0.0.0 \\
  --cluster-cidr 10.200.0.0/16 \\
  --cluster-name=kubernetes \\
  --cluster-signing-cert-file=/var/lib/kubernetes/ca.crt \\
  --cluster-signing-key-file=/var/lib/kubernetes/ca.key \\
  --kubeconfig /var/lib/kubernetes/kube-controller-manager.kubeconfig \\
  --root-ca-file=/var/lib/kubernetes/ca.crt \\
  --service-account-private-key-file=/var/lib/kubernetes/service-accounts.key \\
  --service-cluster-ip-range 10.32.0.0/24 \\
  --use-service-account-credentials=true \\
  --v=2
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


# --- ClusterConfigurations in ConfigMap kube-system/kubeadm-config ------------------------------

V1BETA3_KUBEADM_1_30 = """\
apiServer:
  extraArgs:
    authorization-mode: Node,RBAC
  timeoutForControlPlane: 4m0s
apiVersion: kubeadm.k8s.io/v1beta3
certificatesDir: /etc/kubernetes/pki
clusterName: kubernetes
controllerManager: {}
dns: {}
etcd:
  local:
    dataDir: /var/lib/etcd
imageRepository: registry.k8s.io
kind: ClusterConfiguration
kubernetesVersion: v1.30.14
networking:
  dnsDomain: cluster.local
  serviceSubnet: 10.96.0.0/12
scheduler: {}
"""

V1BETA3_KUBESPRAY = """\
apiServer:
  extraArgs:
    authorization-mode: Node,RBAC
    bind-address: 0.0.0.0
  timeoutForControlPlane: 5m0s
apiVersion: kubeadm.k8s.io/v1beta3
certificatesDir: /etc/kubernetes/ssl
clusterName: cluster.local
controlPlaneEndpoint: 10.0.0.10:6443
controllerManager:
  extraArgs:
    bind-address: 0.0.0.0
    cluster-cidr: 10.233.64.0/18
    configure-cloud-routes: "false"
    controllers: '*,bootstrapsigner,tokencleaner,-nodeipam'
    node-cidr-mask-size: "24"
    node-monitor-grace-period: 40s
    node-monitor-period: 5s
    profiling: "False"
    terminated-pod-gc-threshold: "12500"
  extraVolumes:
  - hostPath: /etc/kubernetes/cloud
    mountPath: /etc/kubernetes/cloud
    name: cloud-config
    readOnly: true
dns: {}
etcd:
  external:
    caFile: /etc/ssl/etcd/ssl/ca.pem
    endpoints:
    - https://10.0.0.10:2379
imageRepository: registry.k8s.io
kind: ClusterConfiguration
kubernetesVersion: v1.30.4
networking:
  dnsDomain: cluster.local
  podSubnet: 10.233.64.0/18
  serviceSubnet: 10.233.0.0/18
scheduler: {}
"""

V1BETA4_KUBEADM_1_35 = """\
apiServer: {}
apiVersion: kubeadm.k8s.io/v1beta4
caCertificateValidityPeriod: 87600h0m0s
certificateValidityPeriod: 8760h0m0s
certificatesDir: /etc/kubernetes/pki
clusterName: kubernetes
controllerManager: {}
dns: {}
encryptionAlgorithm: RSA-2048
etcd:
  local:
    dataDir: /var/lib/etcd
imageRepository: registry.k8s.io
kind: ClusterConfiguration
kubernetesVersion: v1.35.1
networking:
  dnsDomain: cluster.local
  serviceSubnet: 10.96.0.0/12
proxy: {}
scheduler: {}
"""

V1BETA4_PODNET = """\
apiServer: {}
apiVersion: kubeadm.k8s.io/v1beta4
caCertificateValidityPeriod: 87600h0m0s
certificateValidityPeriod: 8760h0m0s
certificatesDir: /etc/kubernetes/pki
clusterName: kubernetes
controlPlaneEndpoint: 192.168.56.11:6443
controllerManager:
  extraArgs:
  - name: allocate-node-cidrs
    value: "true"
  - name: cluster-cidr
    value: 10.244.0.0/16
  - name: node-cidr-mask-size
    value: "24"
  - name: service-cluster-ip-range
    value: 10.96.0.0/12
dns: {}
encryptionAlgorithm: RSA-2048
etcd:
  local:
    dataDir: /var/lib/etcd
imageRepository: registry.k8s.io
kind: ClusterConfiguration
kubernetesVersion: v1.36.2
networking:
  dnsDomain: cluster.local
  podSubnet: 10.244.0.0/16
  serviceSubnet: 10.96.0.0/12
proxy: {}
scheduler: {}
"""

V1BETA4_EDITED = """\
apiServer: {}
apiVersion: kubeadm.k8s.io/v1beta4
clusterName: kubernetes
controllerManager:
  extraArgs:
  - name: bind-address
    value: 0.0.0.0
  - name: controllers
    value: '*,bootstrapsigner,tokencleaner,-nodeipam'
  - name: cluster-cidr
    value: 10.99.0.0/16
  - name: feature-gates
    value: A=true
  - name: cluster-cidr
    value: 10.98.0.0/16
  - name: feature-gates
    value: B=false
  extraEnvs:
  - name: GOMAXPROCS
    value: "2"
kind: ClusterConfiguration
kubernetesVersion: v1.35.1
networking:
  serviceSubnet: 10.96.0.0/12
"""
