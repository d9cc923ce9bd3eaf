# Nomad server agent configuration, rendered by edgectl (templates/server.hcl)
# and written by the instance's user data to {{config_file}}.

bind_addr  = "0.0.0.0"
datacenter = "{{datacenter}}"
region     = "{{nomad_region}}"
# On the instance's own (encrypted) disk.
data_dir   = "{{data_dir}}"
log_level  = "INFO"
# edgectl pins the Nomad version; the servers do not ask HashiCorp for updates.
disable_update_check = true

# HTTP and RPC as clients and operators reach them: through the load
# balancer. Serf is left out on purpose: with bind_addr 0.0.0.0 Nomad
# advertises the instance's own private IPv4, and servers reach each other
# (serf and raft RPC) on that address, not through the load balancer.
advertise {
  http = "{{advertise_addr}}:4646"
  rpc  = "{{advertise_addr}}:4647"
}

acl {
  enabled = true
}

server {
  enabled          = true
  bootstrap_expect = {{bootstrap_expect}}
  raft_protocol    = 3

  # Cloud auto-join: the servers find each other by their EC2 tag (the
  # instance role allows ec2:DescribeInstances).
  server_join {
    retry_join = ["provider=aws region={{aws_region}} tag_key={{discovery_tag_key}} tag_value={{discovery_tag_value}}"]
  }
}

# Files written by user data from SSM. verify_https_client (the sample had
# false): the API is internet-facing through a TCP load balancer, so every
# caller must present a certificate from the deployment's CA as well as an
# ACL token. Operators have one (the CLI certificate, cli.<region>.nomad,
# that edgectl issues), devices have their own; the web UI and its OIDC
# login need the CLI certificate in the browser.
tls {
  http      = true
  rpc       = true
  ca_file   = "{{tls_ca_file}}"
  cert_file = "{{tls_cert_file}}"
  key_file  = "{{tls_key_file}}"

  verify_server_hostname = true
  verify_https_client    = true
}

autopilot {
  cleanup_dead_servers   = true
  last_contact_threshold = "5s"
}

# There is no Consul in an edgectl deployment.
consul {
  server_auto_join = false
  client_auto_join = false
  auto_advertise   = false
}
