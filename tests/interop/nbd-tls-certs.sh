# Sourced by the NBD tests: makes x509 credentials with certtool in QEMU's and libnbd's file
# layout. make_tls_certs DIR creates
#   DIR/srv     ca-cert.pem, server-cert.pem, server-key.pem (a server's --object dir)
#   DIR/cli     ca-cert.pem, client-cert.pem, client-key.pem (a client signed by the CA)
#   DIR/nocert  ca-cert.pem only (a client without a certificate)
#   DIR/rogue   ca-cert.pem, and a client certificate signed by another CA
#   DIR/impostor ca-cert.pem, and a client certificate signed by a CA with the test CA's name
#               but another key (GnuTLS clients offer it, so only verification refuses it)
# make_tls_server_at DIR NAME ADDR (after make_tls_certs DIR) adds DIR/NAME, a server's
# --object dir whose certificate names the IP address ADDR (a client connecting to
# tcp:ADDR:PORT checks the address against it), signed by the same CA.
# Returns non-zero when certtool fails.
# shellcheck shell=bash

_tls_cert() {
    # _tls_cert OUT-PREFIX CA-DIR TEMPLATE: a key and a certificate signed by CA-DIR's CA.
    certtool --generate-privkey --outfile "$1-key.pem" >/dev/null 2>&1 &&
        printf '%b' "$3" >"$1.info" &&
        certtool --generate-certificate --load-ca-certificate "$2/ca-cert.pem" \
            --load-ca-privkey "$2/ca-key.pem" --load-privkey "$1-key.pem" \
            --template "$1.info" --outfile "$1-cert.pem" >/dev/null 2>&1
}

_tls_ca() {
    mkdir -p "$1" &&
        certtool --generate-privkey --outfile "$1/ca-key.pem" >/dev/null 2>&1 &&
        printf 'cn = %s\nca\ncert_signing_key\n' "$2" >"$1/ca.info" &&
        certtool --generate-self-signed --load-privkey "$1/ca-key.pem" \
            --template "$1/ca.info" --outfile "$1/ca-cert.pem" >/dev/null 2>&1
}

make_tls_certs() {
    local d=$1 x
    _tls_ca "$d/ca" "vdisk test CA" || return 1
    _tls_ca "$d/otherca" "some other CA" || return 1
    _tls_ca "$d/fakeca" "vdisk test CA" || return 1
    mkdir -p "$d/srv" "$d/cli" "$d/nocert" "$d/rogue" "$d/impostor" || return 1
    for x in srv cli nocert rogue impostor; do
        cp "$d/ca/ca-cert.pem" "$d/$x/ca-cert.pem" || return 1
    done
    _tls_cert "$d/srv/server" "$d/ca" \
        'cn = localhost\ndns_name = localhost\ntls_www_server\nencryption_key\nsigning_key\n' ||
        return 1
    _tls_cert "$d/cli/client" "$d/ca" \
        'cn = vdisk test client\ntls_www_client\nencryption_key\nsigning_key\n' || return 1
    _tls_cert "$d/rogue/client" "$d/otherca" \
        'cn = rogue client\ntls_www_client\nencryption_key\nsigning_key\n' || return 1
    _tls_cert "$d/impostor/client" "$d/fakeca" \
        'cn = impostor client\ntls_www_client\nencryption_key\nsigning_key\n' || return 1
    rm -f "$d"/*/*.info
}

make_tls_server_at() {
    local d=$1 name=$2 addr=$3
    mkdir -p "$d/$name" && cp "$d/ca/ca-cert.pem" "$d/$name/ca-cert.pem" || return 1
    _tls_cert "$d/$name/server" "$d/ca" \
        "cn = $addr\\nip_address = $addr\\ntls_www_server\\nencryption_key\\nsigning_key\\n" ||
        return 1
    rm -f "$d/$name"/*.info
}
