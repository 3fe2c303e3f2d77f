// Package ebs gives chain nodes EBS-backed host volumes: ensure one at boot (reuse the attached or an available
// volume of this AZ, else restore the newest completed snapshot of the node's family, else create a blank one;
// attach, find the NVMe device, make a filesystem only on a disk with none, mount, fstab, Nomad host_volume
// config), snapshot a synced node consistently (Consul-gated, drained, frozen), prune old snapshots, and list.
package ebs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/smithy-go"
)

// EC2API lists the EC2 calls chainwarden makes, with the SDK's own signatures, so *ec2.Client satisfies it.
type EC2API interface {
	DescribeVolumes(ctx context.Context, in *ec2.DescribeVolumesInput, optFns ...func(*ec2.Options)) (*ec2.DescribeVolumesOutput, error)
	CreateVolume(ctx context.Context, in *ec2.CreateVolumeInput, optFns ...func(*ec2.Options)) (*ec2.CreateVolumeOutput, error)
	AttachVolume(ctx context.Context, in *ec2.AttachVolumeInput, optFns ...func(*ec2.Options)) (*ec2.AttachVolumeOutput, error)
	DescribeSnapshots(ctx context.Context, in *ec2.DescribeSnapshotsInput, optFns ...func(*ec2.Options)) (*ec2.DescribeSnapshotsOutput, error)
	CreateSnapshot(ctx context.Context, in *ec2.CreateSnapshotInput, optFns ...func(*ec2.Options)) (*ec2.CreateSnapshotOutput, error)
	DeleteSnapshot(ctx context.Context, in *ec2.DeleteSnapshotInput, optFns ...func(*ec2.Options)) (*ec2.DeleteSnapshotOutput, error)
	ModifyVolume(ctx context.Context, in *ec2.ModifyVolumeInput, optFns ...func(*ec2.Options)) (*ec2.ModifyVolumeOutput, error)
	DescribeVolumesModifications(ctx context.Context, in *ec2.DescribeVolumesModificationsInput, optFns ...func(*ec2.Options)) (*ec2.DescribeVolumesModificationsOutput, error)
	DetachVolume(ctx context.Context, in *ec2.DetachVolumeInput, optFns ...func(*ec2.Options)) (*ec2.DetachVolumeOutput, error)
	CreateTags(ctx context.Context, in *ec2.CreateTagsInput, optFns ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error)
}

// IMDSAPI is the one instance metadata call made.
type IMDSAPI interface {
	GetInstanceIdentityDocument(ctx context.Context, in *imds.GetInstanceIdentityDocumentInput, optFns ...func(*imds.Options)) (*imds.GetInstanceIdentityDocumentOutput, error)
}

// Errors from AWS are turned into these at the edge; the original SDK error stays wrapped for its details.
var (
	ErrNotFound        = errors.New("not found")
	ErrThrottled       = errors.New("throttled by AWS")
	ErrLimit           = errors.New("AWS limit or quota exceeded")
	ErrInUse           = errors.New("in use")
	ErrIncorrectState  = errors.New("incorrect state")
	ErrDenied          = errors.New("access denied (check the instance role's IAM policy)")
	ErrInvalid         = errors.New("invalid request")
	ErrTokenMismatch   = errors.New("client token reused with different parameters")
	ErrDeviceInUse     = errors.New("device name in use on the instance")
	ErrAWSUnavailable  = errors.New("AWS unavailable")
	ErrAWS             = errors.New("unexpected AWS error")
	ErrNotPassing      = errors.New("node is not passing")
	ErrNoDevice        = errors.New("block device not present")
	ErrUnknownContents = errors.New("device holds data but no filesystem chainwarden mounts; refusing to format it")
	ErrTimeout         = errors.New("timed out")
)

// Error codes of EC2 (and of AWS's common errors) that are not told apart by their shape.
var (
	throttleCodes = map[string]bool{
		"RequestLimitExceeded": true, "Throttling": true, "ThrottlingException": true, "ThrottledException": true,
		"EC2ThrottledException": true, "RequestThrottled": true, "RequestThrottledException": true,
		"TooManyRequestsException": true, "SlowDown": true, "BandwidthLimitExceeded": true,
		"PriorRequestNotComplete": true,
	}
	deniedCodes = map[string]bool{
		"UnauthorizedOperation": true, "AuthFailure": true, "Blocked": true, "OptInRequired": true,
		"PendingVerification": true, "AccessDenied": true, "AccessDeniedException": true,
		"InvalidClientTokenId": true, "SignatureDoesNotMatch": true, "UnrecognizedClientException": true,
		"MissingAuthenticationToken": true, "ExpiredToken": true, "RequestExpired": true,
	}
	unavailableCodes = map[string]bool{
		"InternalError": true, "InternalFailure": true, "ServiceUnavailable": true, "Unavailable": true,
	}
)

// sentinel says what an EC2 error code means for chainwarden. Request-rate limits are ErrThrottled (the SDK
// retries those); account and resource limits (VolumeLimitExceeded, SnapshotLimitExceeded,
// MaxIOPSLimitExceeded, ...) are ErrLimit; a code of no known kind is ErrAWS, not ErrInvalid.
func sentinel(code, msg string) error {
	switch {
	case code == "VolumeModificationRateExceeded": // a per-volume quota (modifications per 24 h), not request rate
		return ErrLimit
	case throttleCodes[code] || strings.HasSuffix(code, "RateExceeded"):
		return ErrThrottled
	case strings.HasSuffix(code, "LimitExceeded") || strings.HasSuffix(code, "QuotaExceeded"):
		return ErrLimit
	case strings.HasSuffix(code, ".NotFound"):
		return ErrNotFound
	case code == "VolumeInUse" || strings.HasSuffix(code, ".InUse") || code == "DependencyViolation":
		return ErrInUse
	case strings.HasPrefix(code, "Incorrect"): // IncorrectState, IncorrectInstanceState, ...
		return ErrIncorrectState
	case deniedCodes[code]:
		return ErrDenied
	case code == "IdempotentParameterMismatch":
		return ErrTokenMismatch
	case unavailableCodes[code] || strings.HasPrefix(code, "Insufficient") && strings.HasSuffix(code, "Capacity"):
		return ErrAWSUnavailable
	case code == "InvalidParameterValue" && strings.Contains(msg, "already in use"):
		return ErrDeviceInUse
	case strings.HasPrefix(code, "Invalid") || strings.HasPrefix(code, "Missing") ||
		strings.HasPrefix(code, "Malformed") || strings.HasPrefix(code, "Unsupported") ||
		code == "UnknownParameter" || code == "ValidationError" || code == "UnknownVolumeType":
		return ErrInvalid
	default:
		return ErrAWS
	}
}

// awsErr turns an SDK error into "ec2 <op>: <sentinel> (<code>: <message>)", keeping both wrapped.
func awsErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var attempts string
	var maxErr *retry.MaxAttemptsError
	if errors.As(err, &maxErr) {
		attempts = fmt.Sprintf(" after %d attempts", maxErr.Attempt)
	}
	var api smithy.APIError
	if !errors.As(err, &api) {
		return fmt.Errorf("ec2 %s%s: %w", op, attempts, err)
	}
	code := api.ErrorCode()
	return fmt.Errorf("ec2 %s%s: %w (%s: %s): %w", op, attempts, sentinel(code, api.ErrorMessage()), code, api.ErrorMessage(), err)
}

// Host is this instance as IMDS describes it.
type Host struct {
	InstanceID string
	AZ         string
	Region     string
}

// AWSOptions says how to reach AWS. Zero values mean the SDK's defaults: the standard credential chain (the
// instance role on EC2), the IMDS endpoint, the regional EC2 endpoint. AWS_ENDPOINT_URL_EC2 and
// AWS_EC2_METADATA_SERVICE_ENDPOINT are honoured by the SDK itself.
type AWSOptions struct {
	EC2Endpoint  string
	IMDSEndpoint string
	MaxAttempts  int           // per call, including the first; default 8
	MaxBackoff   time.Duration // between retries; default 20s
	// Credentials overrides the SDK chain; for tests only (nothing secret is ever read from chainwarden's config).
	Credentials aws.CredentialsProvider
}

// Connect finds this instance through IMDSv2 (no v1 fallback) and returns an EC2 client for its region.
func Connect(ctx context.Context, o AWSOptions) (*ec2.Client, Host, error) {
	var opts []func(*awsconfig.LoadOptions) error
	if o.Credentials != nil {
		opts = append(opts, awsconfig.WithCredentialsProvider(o.Credentials))
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 8
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 20 * time.Second
	}
	opts = append(opts, awsconfig.WithRetryer(func() aws.Retryer {
		return retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = o.MaxAttempts
			so.MaxBackoff = o.MaxBackoff
		})
	}))
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, Host{}, fmt.Errorf("load AWS configuration: %w", err)
	}
	md := imds.NewFromConfig(cfg, func(io *imds.Options) {
		io.EnableFallback = aws.FalseTernary
		if o.IMDSEndpoint != "" {
			io.Endpoint = o.IMDSEndpoint
		}
	})
	host, err := Identify(ctx, md)
	if err != nil {
		return nil, Host{}, err
	}
	cfg.Region = host.Region
	client := ec2.NewFromConfig(cfg, func(eo *ec2.Options) {
		if o.EC2Endpoint != "" {
			eo.BaseEndpoint = aws.String(o.EC2Endpoint)
		}
	})
	return client, host, nil
}

// Identify reads the instance id, AZ and region from the instance identity document.
func Identify(ctx context.Context, md IMDSAPI) (Host, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	doc, err := md.GetInstanceIdentityDocument(ctx, &imds.GetInstanceIdentityDocumentInput{})
	if err != nil {
		return Host{}, fmt.Errorf("read the instance identity from IMDSv2 (is this an EC2 instance with IMDSv2 reachable?): %w", err)
	}
	h := Host{InstanceID: doc.InstanceID, AZ: doc.AvailabilityZone, Region: doc.Region}
	if h.InstanceID == "" || h.AZ == "" || h.Region == "" {
		return Host{}, fmt.Errorf("instance identity document is incomplete: %+v", h)
	}
	return h, nil
}
