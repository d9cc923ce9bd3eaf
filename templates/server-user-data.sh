#!/bin/bash
# First-boot user data of a Nomad server instance (Amazon Linux 2023),
# rendered by edgectl (templates/server-user-data.sh). It installs Nomad
# {{nomad_version}} after verifying HashiCorp's signature of the release's
# SHA256SUMS and the zip's sha256, reads the TLS files from SSM with the
# instance role, writes the server config and the systemd unit, and starts
# Nomad. Its output goes to /var/log/cloud-init-output.log.
set -euo pipefail
# set -e also inside $(...), where the download is verified.
shopt -s inherit_errexit
umask 077

readonly NOMAD_VERSION="{{nomad_version}}"
readonly AWS_REGION="{{aws_region}}"
readonly NOMAD_USER="{{user}}"
readonly NOMAD_BIN="{{nomad_bin}}"
readonly RELEASES="https://releases.hashicorp.com/nomad"

log() { echo "edgectl: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---- the Nomad binary, signature and checksum verified --------------------

nomad_arch() {
  case "$(uname -m)" in
    x86_64) echo amd64 ;;
    aarch64) echo arm64 ;;
    *) die "unsupported architecture $(uname -m)" ;;
  esac
}

# The sha256 edgectl pins for this version's zip on architecture $1; empty
# when it pins none (then the signed SHA256SUMS alone decides).
pinned_sha256() {
  case "$1" in
    amd64) echo "{{nomad_sha256_amd64}}" ;;
    arm64) echo "{{nomad_sha256_arm64}}" ;;
    *) echo "" ;;
  esac
}

# HashiCorp's release signing key as a binary keyring for gpgv: primary
# {{release_key_fingerprint}} and its current signing subkey.
release_key() {
  base64 -d <<'EDGECTL_RELEASE_KEY'
{{release_key_base64}}
EDGECTL_RELEASE_KEY
}

# Downloads release file $2 into directory $1.
fetch() {
  curl --fail --silent --show-error --location --proto '=https' --tlsv1.2 \
    --retry 5 --retry-delay 2 --output "$1/$2" "$RELEASES/$NOMAD_VERSION/$2"
}

# Downloads Nomad's zip for architecture $2 into directory $1 and checks,
# in order: HashiCorp's signature of SHA256SUMS, the zip's sha256 against
# SHA256SUMS, and against edgectl's pin. Prints the zip's path.
download_verified() {
  local dir="$1" arch="$2" zip sums published actual pinned
  zip="nomad_${NOMAD_VERSION}_linux_${arch}.zip"
  sums="nomad_${NOMAD_VERSION}_SHA256SUMS"
  fetch "$dir" "$zip"
  fetch "$dir" "$sums"
  fetch "$dir" "$sums.sig"
  release_key >"$dir/hashicorp.gpg"
  GNUPGHOME="$dir" gpgv --keyring "$dir/hashicorp.gpg" "$dir/$sums.sig" "$dir/$sums" >&2 ||
    die "$sums is not signed by HashiCorp's release key"
  published="$(awk -v f="$zip" '$2 == f { print $1 }' "$dir/$sums")"
  actual="$(sha256sum "$dir/$zip" | cut -d ' ' -f 1)"
  [[ -n "$published" ]] || die "$sums lists no $zip"
  [[ "$actual" == "$published" ]] || die "$zip has sha256 $actual, $sums says $published"
  pinned="$(pinned_sha256 "$arch")"
  if [[ -n "$pinned" ]]; then
    [[ "$actual" == "$pinned" ]] || die "$zip has sha256 $actual, edgectl pins $pinned"
  fi
  log "$zip verified: SHA256SUMS signed by HashiCorp's key, sha256 $actual"
  echo "$dir/$zip"
}

install_nomad() {
  local work arch zip
  command -v gpgv >/dev/null || dnf install -y --allowerasing gnupg2
  command -v unzip >/dev/null || dnf install -y unzip
  work="$(mktemp -d)"
  arch="$(nomad_arch)"
  log "downloading nomad $NOMAD_VERSION ($arch)"
  zip="$(download_verified "$work" "$arch")"
  unzip -o -q "$zip" nomad -d "$work"
  install -m 0755 -o root -g root "$work/nomad" "$NOMAD_BIN"
  rm -rf "$work"
}

# ---- user, directories, files ---------------------------------------------

make_user_and_dirs() {
  getent group "$NOMAD_USER" >/dev/null || groupadd --system "$NOMAD_USER"
  id -u "$NOMAD_USER" >/dev/null 2>&1 ||
    useradd --system --gid "$NOMAD_USER" --home-dir /opt/nomad --no-create-home \
      --shell /sbin/nologin "$NOMAD_USER"
  install -d -m 0755 -o root -g root /opt/nomad
  install -d -m 0750 -o root -g "$NOMAD_USER" "{{config_dir}}" "{{tls_dir}}"
  install -d -m 0700 -o "$NOMAD_USER" -g "$NOMAD_USER" "{{data_dir}}"
}

# Writes stdin to $1 atomically: a temp file beside it, mode $2, owner $3,
# then a rename, so Nomad never reads a half-written file.
write_file() {
  local tmp
  tmp="$(mktemp "$1.XXXXXX")"
  cat >"$tmp"
  chmod "$2" "$tmp"
  chown "$3" "$tmp"
  mv -f "$tmp" "$1"
}

# Prints SSM parameter $1 (decrypted) read with the instance role, whose
# credentials can lag the first seconds of boot: retried.
ssm_get() {
  local attempt
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    if aws ssm get-parameter --region "$AWS_REGION" --name "$1" --with-decryption \
      --query Parameter.Value --output text; then
      return 0
    fi
    log "reading $1 from SSM failed (attempt $attempt), retrying"
    sleep 3
  done
  die "could not read $1 from SSM in $AWS_REGION"
}

write_tls() {
  local ca_pem cert_pem key_pem
  # Read all three before writing any, so a failed read leaves no empty file.
  ca_pem="$(ssm_get "{{ssm_ca_cert}}")"
  cert_pem="$(ssm_get "{{ssm_server_cert}}")"
  key_pem="$(ssm_get "{{ssm_server_key}}")"
  printf '%s\n' "$ca_pem" | write_file "{{tls_ca_file}}" 0644 "root:$NOMAD_USER"
  printf '%s\n' "$cert_pem" | write_file "{{tls_cert_file}}" 0644 "root:$NOMAD_USER"
  printf '%s\n' "$key_pem" | write_file "{{tls_key_file}}" 0640 "root:$NOMAD_USER"
}

write_config_and_unit() {
  write_file "{{config_file}}" 0640 "root:$NOMAD_USER" <<'EDGECTL_SERVER_HCL'
{{server_hcl}}
EDGECTL_SERVER_HCL

  write_file /etc/systemd/system/nomad.service 0644 root:root <<'EDGECTL_NOMAD_UNIT'
{{nomad_unit}}
EDGECTL_NOMAD_UNIT
}

main() {
  install_nomad
  make_user_and_dirs
  write_tls
  write_config_and_unit
  systemctl daemon-reload
  systemctl enable --now nomad.service
  log "nomad $("$NOMAD_BIN" version | head -n 1) started"
}

# Run as a script (cloud-init does); sourced, it only defines the functions
# (edgectl's tests check the download verification that way).
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main
fi
