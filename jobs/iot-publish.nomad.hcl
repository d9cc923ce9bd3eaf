# The IoT publish job (REFERENCE.md): a container that publishes
# {"counter": n} to the IoT Core topic hello/world once a second, with the
# device's Roles Anywhere credentials and certificates mounted in.
#
# `edgectl job run iot-publish` supplies `image` (the ECR repository
# `iot-publish` of this account and region, tag `latest` or --tag); plain
# `nomad job run -var image=… jobs/iot-publish.nomad.hcl` works as well.

variable "image" {
  type        = string
  description = "The iot-publish container image, e.g. <account>.dkr.ecr.<region>.amazonaws.com/iot-publish:latest"
}

job "iot-publish" {
  datacenters = ["*"]
  type        = "service"

  group "iot-publish" {
    count = 1

    task "iot-publish" {
      driver = "docker"

      config {
        image = var.image
        volumes = [
          "/root/aws:/root/.aws",
          "/root/certificates:/root/certificates",
          "/usr/bin:/usr/bin",
        ]
      }
    }
  }
}
