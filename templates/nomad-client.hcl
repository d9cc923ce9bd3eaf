# Nomad client agent of device {{name}}, rendered by edgectl
# (templates/nomad-client.hcl) and written to /opt/nomad/config/nomad.hcl.

name       = "{{name}}"
data_dir   = "/opt/nomad/data"
datacenter = "{{datacenter}}"
region     = "{{region}}"
log_level  = "WARN"
# edgectl pins the Nomad version; the device does not ask HashiCorp for updates.
disable_update_check = true

client {
  enabled           = true
  network_interface = "lo"
  cni_path          = "{{cni_path}}"
{{node_class}}
  server_join {
    retry_join = [{{servers}}]
  }

  # The device's AWS credentials (credential_process through IAM Roles
  # Anywhere) and certificates, for tasks that mount them.
  host_volume "aws-shared-credentials" {
    path      = "/root/aws/"
    read_only = true
  }

  host_volume "iot-certificates" {
    path      = "/root/certificates/"
    read_only = true
  }
{{options}}
}

# mTLS with the servers: the device's own certificate (client.{{region}}.nomad)
# from the deployment's private CA.
tls {
  http                   = true
  rpc                    = true
  ca_file                = "/root/certificates/ca.pem"
  cert_file              = "/root/certificates/device.pem"
  key_file               = "/root/certificates/device-key.pem"
  verify_server_hostname = true
  verify_https_client    = true
}
{{plugins}}
